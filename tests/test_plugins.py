"""Modality plugins: the examples/arseq-dna package found through an entry point, and broken plugins
reported in one warning each while every other modality and the CLI keep working."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from arseq import modalities
from arseq.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "arseq-dna"


def install_entry_points(site: Path, dist: str, points: dict[str, str], monkeypatch) -> None:
    """What `pip install` leaves for importlib.metadata: a *.dist-info with METADATA and entry_points.txt."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in points.items())
    (info / "entry_points.txt").write_text(f"[{modalities.ENTRY_POINT_GROUP}]\n{lines}")
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture
def dna(tmp_path, monkeypatch):
    """The example plugin, registered as if pip-installed (or as it is, where it really is installed)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    if "dna" not in modalities.registered():
        install_entry_points(tmp_path / "site", "arseq-dna", {"dna": "arseq_dna.modality:DnaModality"}, monkeypatch)


@pytest.fixture
def broken(tmp_path, monkeypatch):
    """Three broken plugins: an import error, a class that is no Modality, a Modality without read()."""
    pkg = tmp_path / "plugs" / "broken_plugins"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "crash.py").write_text("import no_such_module_xyz\n")
    (pkg / "impostor.py").write_text("class Impostor:\n    name = 'impostor'\n")
    (pkg / "partial.py").write_text(
        "from arseq.modalities import Modality\n\n"
        "class Partial(Modality):\n    name = 'partial'\n\n"
        "    def build_tokenizer(self, files, source):\n        return None\n\n"
        "    def write(self, tokenizer, samples, out, args):\n        return []\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "plugs"))
    points = {"crash": "broken_plugins.crash:Crash", "impostor": "broken_plugins.impostor:Impostor", "partial": "broken_plugins.partial:Partial"}
    install_entry_points(tmp_path / "site-broken", "broken-plugins", points, monkeypatch)
    return points


def test_example_plugin_is_listed(dna, capsys):
    assert main(["modalities"]) == 0
    out, err = capsys.readouterr()
    rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()}
    assert rows["dna"][1].startswith("arseq-dna ") and rows["dna"][2] == "arseq_dna.modality:DnaModality"
    assert "text" in rows and err == ""


def test_example_plugin_trains_and_generates_fasta(dna, tmp_path, capsys):
    config = tmp_path / "dna.yaml"
    config.write_text((EXAMPLE / "arseq_dna" / "configs" / "tiny.yaml").read_text())
    overrides = [
        "--trainer.max_steps",
        "8",
        "--trainer.val_check_interval",
        "4",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--data.block_size",
        "64",
        "--model.n_layer",
        "1",
        "--model.d_model",
        "32",
    ]
    capsys.readouterr()
    assert main(["train", "--config", str(config), *overrides]) == 0
    run_dir = next((tmp_path / "runs").rglob("version_0"))
    hint = f"sample from it: arseq generate --checkpoint {run_dir} --num-samples 4 --out samples/dna"
    assert hint in capsys.readouterr().err.splitlines()  # the next step, named by the registered modality
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    out = tmp_path / "samples"
    args = ["generate", "--checkpoint", str(ckpt), "--num-samples", "3", "--length", "40", "--prompt", "ATG", "--seed", "1"]
    assert main([*args, "--out", str(out)]) == 0
    fasta = (out / "samples.fasta").read_text().split(">")[1:]
    seqs = ["".join(record.splitlines()[1:]) for record in fasta]
    assert len(seqs) == 3 and all(len(s) == 40 and s.startswith("ATG") and set(s) <= set("ACGT") for s in seqs)
    assert "length=40 gc=" in fasta[0]
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2  # its output_files: refused before sampling
    assert "samples.fasta: already exists" in capsys.readouterr().err


def test_broken_plugins_warn_once_each_and_others_work(dna, broken, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [entry.name for entry, _ in modalities.loadable()]
    messages = [str(w.message) for w in caught if issubclass(w.category, modalities.PluginWarning)]
    assert "text" in names and "dna" in names and not set(broken) & set(names)
    for name, why in [("crash", "ModuleNotFoundError"), ("impostor", "not a subclass"), ("partial", "does not implement read()")]:
        mine = [m for m in messages if f"{name!r}" in m]
        assert len(mine) == 1 and why in mine[0] and "\n" not in mine[0], messages
    assert len(messages) == 3

    assert main(["modalities"]) == 0
    out, err = capsys.readouterr()
    assert {line.split("\t")[0] for line in out.splitlines()} >= {"text", "dna"}
    assert len(err.strip().splitlines()) == 3 and all(line.startswith("warning: skipping modality") for line in err.strip().splitlines())


@pytest.mark.parametrize("name, why", [("crash", "failed to load"), ("impostor", "not a subclass"), ("partial", "does not implement")])
def test_selecting_a_broken_plugin_is_a_one_line_error(broken, tmp_path, capsys, name, why):
    config = tmp_path / "c.yaml"
    config.write_text(f"modality: {{name: {name}}}\ndata: {{paths: {tmp_path}}}\ntrainer: {{max_steps: 1}}\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"'{name}" in err and why in err, err


def test_plugin_name_must_match_its_entry_point(tmp_path, monkeypatch):
    """Checkpoints record the class's name; a different entry-point name would make them unloadable."""
    install_entry_points(tmp_path / "site", "renamed", {"text2": "arseq.modalities.text:TextModality"}, monkeypatch)
    with pytest.raises(modalities.DataError, match="must equal the registered name"):
        modalities.resolve("text2")
    assert modalities.resolve("arseq.modalities.text:TextModality").name == "text"


def test_a_plugin_cannot_shadow_a_builtin(tmp_path, monkeypatch):
    install_entry_points(tmp_path / "site", "evil", {"text": "broken_plugins.crash:Crash"}, monkeypatch)
    with pytest.warns(modalities.PluginWarning, match="name is taken"):
        entries = modalities.registered()
    assert entries["text"].package == "arseq"


def test_dna_kmer_tokens_are_lossless_and_the_length_constraint_holds(dna):
    from arseq_dna.modality import DnaModality
    from arseq_dna.tokenizer import NucleotideTokenizer

    tok = NucleotideTokenizer("dna", k=3)
    ids = tok.encode("ACGTNacgtRAAC")
    assert tok.decode(ids) == "ACGTNACGTNAAC" and len(ids) == 9  # ACG, T N A singles, CGT, N A A singles, C
    assert NucleotideTokenizer("rna").decode(NucleotideTokenizer("rna").encode("ACGT")) == "ACGU"
    with pytest.raises(ValueError, match="position 2"):
        tok.encode("AC-GT")
    mask = DnaModality(kmer=3).constraint(tok, 7)
    row = [tok.bos_id, *tok.encode("AC")]
    allowed = mask([row])[0]
    assert not allowed[tok.eos_id] and not allowed[tok.n_id] and allowed[tok.encode("GGG")[0]]
    row += tok.encode("GGG") + tok.encode("T")  # 6 bases: one more single base, then only EOS
    allowed = mask([row])[0]
    assert not allowed[tok.eos_id] and not allowed[tok.encode("GGG")[0]] and allowed[tok.encode("A")[0]]
    row += tok.encode("A")
    assert mask([row])[0].nonzero().flatten().tolist() == [tok.eos_id]


@pytest.mark.parametrize("name", ["text", "music", "image", "protein"])
def test_the_import_paths_of_0_1_0_still_name_the_built_ins(name):
    """Checkpoints store the registered name; a config (and so a run's metadata) may name the class by the
    import path 0.1.0 had, `arseq.modalities.<name>:<Class>`: the built-ins are packages that export it."""
    target = modalities.BUILTIN[name]
    assert target == f"arseq.modalities.{name}:{name.capitalize()}Modality"
    assert modalities.resolve(target).name == name
    assert modalities.resolve(target.replace(":", ".")).name == name
