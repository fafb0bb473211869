"""Protein modality: tokenizers, FASTA reading and its errors, constrained designs, FASTA/CSV output, metrics."""

from __future__ import annotations

import csv
import gzip
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from Bio import SeqIO

from arseq.decode import generate
from arseq.modalities import DataError, Example, Plan, Request, Sample, SamplingOptions, Skipped, resolve
from arseq.modalities.protein import ProteinGenerate, ProteinModality
from arseq.modalities.protein.metrics import degenerate, kl_divergence, novelty, properties
from arseq.models.scoring import unigram_baseline
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.tokenizers.protein import ALPHABET, STANDARD, ProteinBPETokenizer, ProteinTokenizer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def read_all(modality: ProteinModality, files: list[Path]) -> tuple[list[Example], list[Skipped]]:
    tok = modality.build_tokenizer(files, None)
    items = list(modality.read(files, None, tok, check_roundtrip=True))
    return [i for i in items if isinstance(i, Example)], [i for i in items if isinstance(i, Skipped)]


def request(n: int = 1, prompt: str | None = None, out: Path | None = None, overwrite: bool = False, **options) -> Request:
    return Request(n, prompt, options=ProteinGenerate(**options), out=out, overwrite=overwrite)


def write_designs(tok, samples: list[Sample], out: Path, **kw) -> list[Path]:
    return ProteinModality().write(tok, samples, request(out=out, **kw), Plan([]))


# ---- tokenizers ----------------------------------------------------------------------------------
def test_registered():
    assert resolve("protein") is ProteinModality


def test_residue_tokenizer_roundtrip_all_letters():
    tok = ProteinTokenizer()
    seq = ALPHABET + "MKTXBZUOXXB"
    ids = tok.encode(seq)
    assert len(ids) == len(seq) and min(ids) >= 3 and tok.vocab_size == 28
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == seq
    assert ProteinTokenizer.from_dict(tok.to_dict()).encode(seq) == ids
    with pytest.raises(ValueError, match="J"):
        tok.encode("MKJ")
    with pytest.raises(ValueError):
        tok.encode("MKé")


def test_bpe_tokenizer_roundtrip_and_state():
    rng = np.random.default_rng(0)
    proteins = ["".join(rng.choice(list(STANDARD), size=80)) + "MKTAYIAKQR" * 3 for _ in range(50)]
    tok = ProteinBPETokenizer.fit(proteins, vocab_size=60)
    assert tok.vocab_size == 60 and tok.pieces[:3] == ["<pad>", "<bos>", "<eos>"]
    for seq in proteins[:5] + ["XBZUO", "U", "MKTXBZUOW"]:
        ids = tok.encode(seq)
        assert tok.decode(ids) == seq
    assert len(tok.encode(proteins[0])) < len(proteins[0])  # merges learnt
    again = ProteinBPETokenizer.from_dict(tok.to_dict())
    assert again.encode(proteins[1]) == tok.encode(proteins[1])
    with pytest.raises(ValueError, match="J"):
        tok.encode("MKJ")


# ---- reading FASTA -------------------------------------------------------------------------------
FASTA = """>sp|P1|ONE first protein
MKTAY
iakqr

qisfv*
>empty record
>P2 lower case and spaces
mk ta\tyw*
>P3 internal stop
MKT*AY
>P4 digits
MKT1AY
>P1dup same as P1
MKTAYIAKQRQISFV
"""


def test_fasta_wrapped_lowercase_stops_and_bad_records(tmp_path):
    m = ProteinModality()
    examples, skipped = read_all(m, [write(tmp_path, "x.fasta", FASTA)])
    tok = ProteinTokenizer()
    assert [e.name for e in examples] == ["sp|P1|ONE", "P2"]
    assert tok.decode(examples[0].tokens) == "MKTAYIAKQRQISFV"
    assert examples[0].tokens[0] == tok.bos_id and examples[0].tokens[-1] == tok.eos_id
    assert tok.decode(examples[1].tokens) == "MKTAYW"
    assert all(e.exact for e in examples)
    reasons = {s.reason.split(":")[0]: s.reason for s in skipped}
    assert set(reasons) == {"record 2 (empty)", "record 4 (P3)", "record 5 (P4)"}
    assert "empty sequence" in reasons["record 2 (empty)"]
    assert "stop '*' inside" in reasons["record 4 (P3)"]
    assert "'1'" in reasons["record 5 (P4)"]
    assert all(s.file.endswith("x.fasta") and "\n" not in s.reason for s in skipped)
    assert m.filtered["duplicates"] == 1


def test_gzip_and_dedupe_across_files(tmp_path):
    plain = write(tmp_path, "a.fa", ">a\nMKTAYW\n>b\nMKV\n")
    packed = write(tmp_path, "b.faa.gz", gzip.compress(b">c\nMKTAYW\n>d\nWWWWKK\n"))
    examples, skipped = read_all(ProteinModality(), [plain, packed])
    assert [e.name for e in examples] == ["a", "b", "d"] and not skipped
    examples, _ = read_all(ProteinModality(deduplicate=False), [plain, packed])
    assert len(examples) == 4


def test_nonstandard_policies_and_length_filters(tmp_path):
    path = write(tmp_path, "n.fasta", ">std\nMKTAYW\n>amb\nMKBZXW\n>sec\nMKUOW\n>j\nMKJW\n>short\nMK\n")
    keep, skipped = read_all(ProteinModality(), [path])
    assert [e.name for e in keep] == ["std", "amb", "sec", "short"]
    assert [s.reason.split(":")[0] for s in skipped] == ["record 4 (j)"]
    x = ProteinModality(nonstandard="x")
    mapped, skipped = read_all(x, [path])
    tok = ProteinTokenizer()
    assert [tok.decode(e.tokens) for e in mapped] == ["MKTAYW", "MKXXXW", "MKXXW", "MKXW", "MK"] and not skipped
    drop = ProteinModality(nonstandard="drop", min_length=3)
    kept, skipped = read_all(drop, [path])
    assert [e.name for e in kept] == ["std"] and not skipped
    assert drop.filtered == {"nonstandard_dropped": 3, "too_short": 1}
    short = ProteinModality(max_length=5)
    kept, _ = read_all(short, [path])
    assert [e.name for e in kept] == ["sec", "short"] and short.filtered["too_long"] == 2
    clean = write(tmp_path, "clean.fasta", ">a\nMKTAYW\n")
    with pytest.raises(DataError, match="passes the filters"):
        list(ProteinModality(min_length=100).read([clean], None, ProteinTokenizer()))
    with pytest.raises(DataError):
        ProteinModality(nonstandard="maybe")
    with pytest.raises(DataError):
        ProteinModality(min_length=10, max_length=5)


RANDOM_FASTA = b"".join(b">r%d\n" % i + "".join(np.random.default_rng(i).choice(list(STANDARD), size=300)).encode() + b"\n" for i in range(20))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.fasta", "this is not fasta\nat all\n", "first line does not start with '>'"),
        ("empty.fasta", "", "empty file"),
        ("blank.fa", "\n\n", "empty file"),
        ("digits.fasta", ">only\nMKT 123 AYW\n", "record 1 (only): invalid characters '123'"),
        ("symbols.fa", ">g\nMKT-A.Y#\n", "invalid characters '#-.'"),
        ("binary.fasta", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not FASTA"),
        ("broken.fasta.gz", gzip.compress(RANDOM_FASTA)[: len(gzip.compress(RANDOM_FASTA)) // 2], "corrupt gzip"),
        ("garbage.fa.gz", b"\x1f\x8b" + b"\x00" * 40, "corrupt gzip"),
    ],
)
def test_bad_input_single_file_is_one_line_error(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    m = ProteinModality()
    with pytest.raises(DataError) as err:
        list(m.read([path], None, ProteinTokenizer()))
    text = str(err.value)
    assert "\n" not in text and name in text and message in text


def test_bad_file_in_corpus_is_skipped(tmp_path):
    good = write(tmp_path, "good.fasta", ">a\nMKTAYW\n")
    bad = write(tmp_path, "bad.fasta", "hello\n")
    examples, skipped = read_all(ProteinModality(), [good, bad])
    assert len(examples) == 1 and len(skipped) == 1 and skipped[0].file.endswith("bad.fasta")


def test_bpe_build_tokenizer_from_files(tmp_path):
    rng = np.random.default_rng(1)
    text = "".join(f">p{i}\n{''.join(rng.choice(list(STANDARD), size=60))}\n" for i in range(30))
    m = ProteinModality(tokenizer="protein_bpe", bpe_vocab_size=64)
    examples, _ = read_all(m, [write(tmp_path, "b.fasta", text)])
    assert len(examples) == 30 and all(e.exact for e in examples)
    tok = m.build_tokenizer([tmp_path / "b.fasta"], None)
    assert m.load_tokenizer(tok.to_dict()).to_dict() == tok.to_dict()
    assert "residues_per_token" in m.summarize(tok, examples)


# ---- generation ----------------------------------------------------------------------------------
def tiny_model(vocab: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=vocab, max_seq_len=64, n_layer=1, n_head=2, d_model=16))


@pytest.mark.parametrize("bpe", [False, True])
def test_constraint_alphabet_and_lengths(bpe):
    if bpe:
        rng = np.random.default_rng(2)
        tok = ProteinBPETokenizer.fit(["".join(rng.choice(list(ALPHABET), size=50)) for _ in range(40)], vocab_size=80)
    else:
        tok = ProteinTokenizer()
    m = ProteinModality()
    plan = m.plan(tok, request(12, prefix="mkt", min_length=20, max_length=30, standard_only=True))
    cfg = SamplingOptions(seed=0).resolve(plan.sampling, (tok.eos_id,))
    assert cfg.max_new_tokens == 30 - 3 + 1
    model = tiny_model(tok.vocab_size)
    with torch.no_grad():  # make EOS and non-standard letters very attractive: the constraint must win
        bias = torch.zeros(tok.vocab_size)
        bias[tok.eos_id] = 50.0
        bias[[i for i, p in enumerate(tok.pieces) if i > 2 and set(p) - set(STANDARD)]] = 40.0
        model.lm_head.weight.data[:] = 0
        model.norm.weight.data[:] = 1
        model.lm_head.weight.data[:, 0] = bias
        model.embed.weight.data[:, 0] += 1.0  # a constant feature carries the bias
    prompts = plan.prompts
    gen = generate(model, prompts, cfg, constraint=plan.constraint())
    for p, t in zip(prompts, gen.tokens):
        seq = tok.decode(p + t)
        assert seq.startswith("MKT") and set(seq) <= set(STANDARD) and 20 <= len(seq) <= 30
    assert all(gen.stopped)


def test_constraint_without_flags_only_residues_and_eos():
    tok = ProteinTokenizer()
    m = ProteinModality()
    allowed = m.plan(tok, request()).constraint()([[tok.bos_id], [tok.bos_id, 5, 6]])
    assert not allowed[:, [tok.pad_id, tok.bos_id]].any()
    assert not allowed[0, tok.eos_id] and allowed[1, tok.eos_id]  # never an empty protein
    assert allowed[:, 3:].all()


def test_presets_and_given_options_win():
    m, tok = ProteinModality(), ProteinTokenizer()
    cfg = SamplingOptions().resolve(m.plan(tok, request(preset="protgpt2")).sampling, ())
    assert cfg.top_k == 950 and cfg.repetition_penalty == 1.2
    cfg = SamplingOptions(temperature=1.0).resolve(m.plan(tok, request(preset="progen2")).sampling, ())  # --temperature 1.0
    assert cfg.temperature == 1.0 and cfg.top_p == 0.9
    for bad in (
        request(min_length=10, max_length=5),
        request(rank=0.0),
        request(prefix="MKTAY", max_length=3),
        request(prefix="MK1"),
        request(prefix="MKX", standard_only=True),
        request(prefix="MK", prompt="MK"),
        request(preset="protgpt3"),
    ):
        with pytest.raises(DataError):
            m.plan(tok, bad)


def test_prompt_fasta_file_gives_motifs(tmp_path):
    path = write(tmp_path, "motifs.fasta", ">a\nMKT\n>b\nMAL\n")
    tok = ProteinTokenizer()
    prompts = ProteinModality().plan(tok, request(3, prompt=str(path))).prompts
    assert [tok.decode(p) for p in prompts] == ["MKT", "MAL", "MKT"]
    for given in (dict(prompt="MK1"), dict(prefix="MK1")):
        flag = "--prompt" if "prompt" in given else "--prefix"  # the motif's flag named: the server maps it to its field
        with pytest.raises(DataError, match=f"^{flag} 'MK1': invalid characters '1'"):
            ProteinModality().plan(tok, request(1, **given))


def samples_for(tok: ProteinTokenizer) -> list[Sample]:
    seqs = ["MKTAYIAKQR", "MKXBZUOAAW", "XXXX", "MKTWWWWWWWWWWWWWW"]
    nlls = [2.0, 1.0, 3.0, 0.5]
    return [Sample([tok.bos_id], tok.encode(s), i != 3, n) for i, (s, n) in enumerate(zip(seqs, nlls))]


def test_write_fasta_and_property_csv(tmp_path):
    tok = ProteinTokenizer()
    out = tmp_path / "designs.fasta"
    paths = write_designs(tok, samples_for(tok), out)
    assert paths == [out, tmp_path / "designs.csv"]
    records = list(SeqIO.parse(out, "fasta"))
    assert [str(r.seq) for r in records] == ["MKTAYIAKQR", "MKXBZUOAAW", "XXXX", "MKTWWWWWWWWWWWWWW"]
    assert records[0].description == f"design_1 length=10 perplexity={math.exp(2.0):.3f} end=eos"
    assert records[3].description.endswith("end=limit")
    with pytest.raises(DataError, match="designs.fasta: already exists; pass --overwrite"):
        write_designs(tok, samples_for(tok), out, max_length=10)
    write_designs(tok, samples_for(tok), out, max_length=10, overwrite=True)
    assert next(SeqIO.parse(out, "fasta")).description.endswith("end=max_length")
    rows = list(csv.DictReader(open(tmp_path / "designs.csv")))
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert float(rows[0]["molecular_weight"]) > 1000 and -5 < float(rows[0]["gravy"]) < 5
    assert rows[1]["nonstandard_residues"] == "5" and rows[1]["isoelectric_point"]
    assert rows[3]["degenerate"] == "1" and rows[3]["longest_run"] == "14" and rows[0]["degenerate"] == "0"
    assert rows[2]["molecular_weight"] == ""  # nothing standard to analyse: empty cells, no crash
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_designs_record_the_conditions_they_were_sampled_with(tmp_path):
    tok = ProteinTokenizer()
    samples = [replace(s, conditions={"tag": "Cell.membrane-M"}) for s in samples_for(tok)[:2]]
    write_designs(tok, samples, tmp_path / "tagged.fasta")
    records = list(SeqIO.parse(tmp_path / "tagged.fasta", "fasta"))
    assert [r.description.split()[-1] for r in records] == ["tag=Cell.membrane-M"] * 2
    rows = list(csv.DictReader(open(tmp_path / "tagged.csv")))
    assert [r["tag"] for r in rows] == ["Cell.membrane-M"] * 2 and list(rows[0])[:5] == ["id", "length", "perplexity", "end", "tag"]


def test_rank_keeps_lowest_perplexity_fraction_with_degenerate_designs_last(tmp_path):
    tok = ProteinTokenizer()
    out = tmp_path / "ranked.fa.gz"
    write_designs(tok, samples_for(tok), out, rank=0.5)
    with gzip.open(out, "rt") as f:
        records = list(SeqIO.parse(f, "fasta"))
    assert [r.id for r in records] == ["design_2", "design_1"]  # design_4 has the lowest perplexity: a W repeat
    write_designs(tok, samples_for(tok), out, rank=1.0, overwrite=True)
    with gzip.open(out, "rt") as f:
        assert [r.id for r in SeqIO.parse(f, "fasta")] == ["design_2", "design_1", "design_3", "design_4"]
    assert (tmp_path / "ranked.csv").exists()


def test_write_refuses_to_overwrite_prompt_and_csv_name(tmp_path):
    tok = ProteinTokenizer()
    motifs = write(tmp_path, "motifs.fasta", ">a\nMKT\n")
    with pytest.raises(DataError):
        write_designs(tok, samples_for(tok), motifs, prompt=str(motifs))
    assert motifs.read_text() == ">a\nMKT\n"
    with pytest.raises(DataError):
        write_designs(tok, samples_for(tok), tmp_path / "d.csv")


def test_properties_cope_with_nonstandard():
    props = properties("MKTAYBZXUOW")
    assert props["nonstandard_residues"] == 5 and props["molecular_weight"] > 0
    assert properties("M")["instability_index"] == 0.0


# ---- evaluation and metrics ----------------------------------------------------------------------
def test_unigram_baseline_counts_the_same_tokens():
    tok = ProteinTokenizer()
    enc = lambda s: np.array([tok.bos_id, *tok.encode(s), tok.eos_id])
    train = [enc("AAAC"), enc("AC")]
    val = [enc("AAU")]
    nll, n = unigram_baseline(train, val, tok.vocab_size, never_predicted=(tok.pad_id, tok.bos_id))
    counts = np.ones(tok.vocab_size - 2)  # add-one over every id that can follow BOS (residues + EOS)
    a, c, eos, u = (tok.encode("A")[0] - 2, tok.encode("C")[0] - 2, tok.eos_id - 2, tok.encode("U")[0] - 2)
    counts[a] += 4
    counts[c] += 2
    counts[eos] += 2
    p = counts / counts.sum()
    assert n == sum(len(v) - 1 for v in val) == 4
    assert nll == pytest.approx(-(2 * math.log(p[a]) + math.log(p[u]) + math.log(p[eos])) / 4)


def test_metrics_same_keys_and_meaning():
    tok = ProteinTokenizer()
    m = ProteinModality()
    rng = np.random.default_rng(3)
    train_seqs = ["".join(rng.choice(list(STANDARD), size=120)) for _ in range(20)]
    encoded = [np.array([1, *tok.encode(s), 2]) for s in train_seqs]
    before = m.metrics(tok, [list(e) for e in encoded[:3]])
    assert math.isnan(before["composition_kl"])  # no training reference given
    copies = m.metrics(tok, [list(e) for e in encoded[:5]], encoded)
    fresh = m.metrics(tok, [[1, *tok.encode("".join(rng.choice(list(STANDARD), size=120)))] for _ in range(5)], encoded)
    repeats = m.metrics(tok, [[1, *tok.encode("MKT" + "Q" * 20)], [1, *tok.encode("MKTAYIAKQR")]], encoded)
    assert set(before) == set(copies) == set(fresh) == set(repeats)
    assert m.metrics(tok, [list(e) for e in encoded[:5]], encoded) == copies  # no state kept between calls
    assert copies["train_identity_mean"] == pytest.approx(1.0) and copies["near_copy_fraction"] == 1.0
    assert fresh["train_identity_mean"] < 0.5
    assert repeats["degenerate_fraction"] == 0.5 and repeats["longest_run_mean"] == (20 + 1) / 2
    assert copies["length_mean"] == 120 and sum(copies[f"aa_{a}"] for a in STANDARD) == pytest.approx(1.0)
    assert repeats["composition_kl"] > fresh["composition_kl"] > 0


def test_repeat_and_divergence_helpers():
    assert degenerate("MK" + "GP" * 6 + "W") and degenerate("A" * 12) and not degenerate("A" * 11 + "MKTAYIAKQR")
    assert degenerate("MKTAYIAKQR" * 3) and not degenerate("MKTAYIAKQRW")
    p = np.array([0.5, 0.5])
    assert kl_divergence(p, p) == pytest.approx(0.0) and kl_divergence(p, np.array([0.9, 0.1])) > 0
    assert novelty(["MKTAYIAKQR"], ["GGGMKTAYIAKQRGGG", "WWWW"])[0] == pytest.approx(1.0)


def test_real_data_reads_cleanly():
    path = SHARED / "proteins_val.fasta"
    if not path.exists():
        pytest.skip("shared data absent")
    m = ProteinModality()
    examples, skipped = read_all(m, [path])
    assert len(examples) == 1678 and not skipped and all(e.exact for e in examples)
