"""Generated files: never replace a user's file without --overwrite, all or nothing, usual permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import music21
import pytest

from arseq.app import generation
from arseq.app.run_options import RunOptions
from arseq.artifacts.checkpoint import Loaded
from arseq.artifacts.metadata import RunMeta
from arseq.atomic import OutputFiles, atomic_write
from arseq.cli import main
from arseq.modalities import DataError, Plan, Request, Sample, resolve
from arseq.modalities.music.reading import prompt_tokens
from arseq.modalities.protein import ProteinGenerate, ProteinModality
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.tokenizers.char import CharTokenizer
from arseq.tokenizers.protein import ProteinTokenizer


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_honours_the_umask_and_leaves_no_temp_file(tmp_path, umask022):
    atomic_write(tmp_path / "a" / "x.txt", "hello")
    atomic_write(tmp_path / "a" / "y.bin", b"\x00\x01")
    atomic_write(tmp_path / "a" / "z.png", lambda p: p.write_bytes(b"png"))
    assert [(p.name, _mode(p)) for p in sorted((tmp_path / "a").iterdir())] == [("x.txt", 0o644), ("y.bin", 0o644), ("z.png", 0o644)]
    assert (tmp_path / "a" / "z.png").read_bytes() == b"png"


def test_output_files_refuse_existing_files_unless_overwrite(tmp_path):
    victim = tmp_path / "notes.md"
    victim.write_text("thirty kilobytes of notes")
    files = OutputFiles()
    files.add(tmp_path / "new.txt", "new")
    files.add(victim, "10 bytes!!")
    with pytest.raises(DataError, match="notes.md: already exists; pass --overwrite"):
        files.commit()
    assert victim.read_text() == "thirty kilobytes of notes" and not (tmp_path / "new.txt").exists()
    files.overwrite = True
    assert files.commit() == [tmp_path / "new.txt", victim] and victim.read_text() == "10 bytes!!"


def test_a_failure_midway_leaves_no_file_and_no_created_folder(tmp_path):
    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    files = OutputFiles()
    files.add(tmp_path / "out" / "deep" / "a.txt", "a")
    files.add(tmp_path / "out" / "deep" / "b.png", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        files.commit()
    assert list(tmp_path.iterdir()) == []


def test_the_prompt_file_is_protected_even_with_overwrite(tmp_path):
    prompt = tmp_path / "sample_000.mid"
    prompt.write_bytes(b"MThd")
    files = OutputFiles(overwrite=True, protect=[prompt])
    files.add(tmp_path / "sample_000.mid", b"new")
    with pytest.raises(DataError, match="input of this command"):
        files.commit()
    assert prompt.read_bytes() == b"MThd"


def test_protein_out_does_not_replace_an_unrelated_csv(tmp_path):
    tok = ProteinTokenizer()
    (tmp_path / "victim.csv").write_text("my spreadsheet")
    samples = [Sample([tok.bos_id], tok.encode("MKTAYIAKQR"), True, 1.0)]
    request = Request(1, options=ProteinGenerate(), out=tmp_path / "victim.fasta")
    with pytest.raises(DataError, match="victim.csv: already exists"):
        ProteinModality().write(tok, samples, request, Plan([]))
    assert (tmp_path / "victim.csv").read_text() == "my spreadsheet" and not (tmp_path / "victim.fasta").exists()


def test_generate_never_overwrites_without_the_flag(trained, tmp_path, capsys, umask022, monkeypatch):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    notes = tmp_path / "notes.md"
    notes.write_text("x" * 30_000)
    base = ["generate", "--checkpoint", ckpt, "--max-new-tokens", "10", "--seed", "1"]
    assert main([*base, "--out", str(notes)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.md: already exists" in err[0] and "--overwrite" in err[0]
    assert notes.read_text() == "x" * 30_000
    assert main([*base, "--out", str(notes), "--overwrite"]) == 0
    assert notes.read_text() != "x" * 30_000 and _mode(notes) == 0o644
    folder = tmp_path / "s"
    assert main([*base, "--num-samples", "2", "--out", str(folder)]) == 0
    first = (folder / "sample_001.txt").read_text()
    sampled = []
    real = generation.sample
    monkeypatch.setattr(generation, "sample", lambda *a, **k: sampled.append(1) or real(*a, **k))
    assert main([*base, "--num-samples", "2", "--seed", "2", "--out", str(folder)]) == 2
    assert "sample_000.txt: already exists" in capsys.readouterr().err and not sampled  # refused before sampling
    assert main([*base, "--num-samples", "1", "--out", str(tmp_path / "poem.txt")]) == 0 and sampled == [1]
    assert main([*base, "--num-samples", "3", "--out", str(folder)]) == 2 and sampled == [1]
    assert main([*base, "--num-samples", "2", "--out", str(tmp_path / "poem.txt")]) == 2 and sampled == [1]  # both in poem.txt
    assert (folder / "sample_001.txt").read_text() == first
    assert {_mode(p) for p in folder.iterdir()} == {0o644}
    (tmp_path / "file").write_text("a file")
    assert main([*base, "--num-samples", "2", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_earlier_samples_are_those_this_run_would_write(tmp_path):
    for name in ["sample_000.mid", "sample_001_cat.png", "sample_002.png", "sample_000x.png", "grid.png", "chorale_001.mid"]:
        (tmp_path / name).write_text("earlier")
    assert [p.name for p in generation.earlier_samples(tmp_path, 2)] == ["sample_000.mid", "sample_001_cat.png"]
    assert generation.earlier_samples(tmp_path, 3)[-1].name == "sample_002.png"
    assert [p.name for p in generation.earlier_samples(tmp_path / "chorale.mid", 2)] == ["chorale_001.mid"]
    assert generation.earlier_samples(tmp_path / "chorale.mid", 1) == []  # one sample is chorale.mid itself
    assert generation.earlier_samples(tmp_path / "grid.png", 1) == [tmp_path / "grid.png"]
    assert generation.earlier_samples(tmp_path / "grid.png", 2) == []  # two samples are grid_000.png, grid_001.png
    assert generation.earlier_samples(tmp_path / "new" / "folder", 4) == []


def _loaded(modality, tok) -> Loaded:
    """A random tiny model of `modality`: enough to plan and refuse (sampling is never reached)."""
    model = Transformer(TransformerConfig(vocab_size=tok.vocab_size, max_seq_len=64, n_layer=1, n_head=2, d_model=16))
    return Loaded(model.eval(), tok, modality, RunMeta(modality.name, {}, {}, model.cfg.__dict__))


@pytest.mark.parametrize(
    "name, out, n, existing",
    [
        ("music", "piece.mid", 1, "piece.png"),  # one sample: piece.mid, piece.musicxml, piece.png
        ("music", "piece.musicxml", 2, "piece_001.mid"),
        ("protein", "d.fasta", 3, "d.csv"),  # the designs' properties beside the FASTA
        ("protein", ".", 2, "designs.csv"),  # a folder: designs.fasta and designs.csv in it
    ],
)
def test_files_the_modality_names_are_refused_before_sampling(name, out, n, existing, tmp_path, monkeypatch):
    modality = resolve(name)()
    tok = modality.tokenizer if name == "music" else ProteinTokenizer()
    (tmp_path / existing).write_text("mine")
    monkeypatch.setattr(generation, "sample", lambda *a, **k: pytest.fail("sampled before refusing"))
    request = Request(n, options=modality.generate_options(), out=tmp_path / out)
    with pytest.raises(DataError, match=f"{existing}: already exists; pass --overwrite"):
        generation.run_generate(_loaded(modality, tok), request, RunOptions())
    assert (tmp_path / existing).read_text() == "mine"


def test_output_files_are_what_write_writes(tmp_path):
    tok = ProteinTokenizer()
    samples = [Sample([tok.bos_id], tok.encode(seq), True, 1.0) for seq in ("MKTAYIAKQR", "MWWK")]
    for out in (tmp_path / "a.fasta", tmp_path / "b.fasta.gz", tmp_path):
        request = Request(2, options=ProteinGenerate(), out=out)
        named = ProteinModality().output_files(tok, request)
        assert ProteinModality().write(tok, samples, request, Plan([])) == named and all(p.exists() for p in named)
    music = resolve("music")()
    events = prompt_tokens(music.tokenizer, Path(music21.corpus.getWork("bwv66.6")), 2)  # two bars of a chorale
    for out, n in ((tmp_path / "m" / "chorale.mid", 1), (tmp_path / "m" / "set", 2)):
        request = Request(n, options=music.generate_options(), out=out)
        written = music.write(music.tokenizer, [Sample(events[:1], events[1:], True, 1.0)] * n, request, Plan([]))
        assert sorted(written) == sorted(music.output_files(music.tokenizer, request))


def test_several_samples_named_by_out_leave_a_file_of_that_name_alone(tmp_path, monkeypatch):
    """`--out piece.mid --num-samples 2` writes piece_000.mid and piece_001.mid: an earlier piece.mid is no reason to refuse."""
    music = resolve("music")()
    (tmp_path / "piece.mid").write_text("an earlier piece")

    class Sampling(Exception):
        """Raised where sampling would begin: past every refusal."""

    def sample(*args, **kwargs):
        raise Sampling

    monkeypatch.setattr(generation, "sample", sample)
    with pytest.raises(Sampling):
        generation.run_generate(
            _loaded(music, music.tokenizer), Request(2, options=music.generate_options(), out=tmp_path / "piece.mid"), RunOptions()
        )


def test_text_output_files_are_what_write_writes(tmp_path):
    text, tok = resolve("text")(), CharTokenizer.fit(["the cat sat"])
    for out, n in (("one.txt", 1), ("all.md", 3), ("folder", 2), ("named.mid", 2)):
        request = Request(n, out=tmp_path / out)
        samples = [Sample([tok.bos_id], tok.encode("cat"), True, 1.0)] * n
        assert text.write(tok, samples, request, Plan([])) == text.output_files(tok, request)
