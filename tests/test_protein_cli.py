"""End to end through the CLI: train a tiny model on FASTA, generate designs, parse the FASTA and CSV, evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from Bio import SeqIO

from arseq import cli

STANDARD = "ACDEFGHIKLMNPQRSTVWY"


def fasta(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        body = "".join(rng.choice(list(STANDARD), size=int(rng.integers(20, 60))))
        lines += [f">p{seed}_{i} test protein", "M" + body.lower() + "XB*"]  # lowercase, non-standard, stop
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_generate_parse_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "cache"))
    train, val = fasta(tmp_path / "train.fasta", 40, 0), fasta(tmp_path / "val.fa", 8, 1)
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
seed: 0
modality: {{name: protein, tokenizer: protein}}
data: {{paths: {train}, val_paths: {val}, block_size: 32, batch_size: 4}}
model: {{n_layer: 1, n_head: 2, d_model: 16}}
optim: {{lr: 1.0e-3, warmup_steps: 2}}
trainer: {{max_steps: 6, val_check_interval: 3, check_val_every_n_epoch: null, limit_val_batches: 2,
          accelerator: cpu, enable_progress_bar: false, enable_model_summary: false, default_root_dir: {tmp_path / "runs"}}}
""")
    assert cli.main(["prepare", "--config", str(config), "--check-roundtrip"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train_items"] == 40 and stats["val_items"] == 8 and stats["roundtrip_exact"] == 1.0

    assert cli.main(["train", "--config", str(config)]) == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))

    out = tmp_path / "out" / "designs.fasta"
    args = [
        "generate",
        "--checkpoint",
        str(ckpt),
        "--num-samples",
        "6",
        "--seed",
        "0",
        "--prefix",
        "mkt",
        "--min-length",
        "10",
        "--max-length",
        "25",
        "--standard-only",
        "--preset",
        "protgpt2",
        "--rank",
        "0.5",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    records = list(SeqIO.parse(out, "fasta"))
    assert len(records) == 3
    ppl = [float(r.description.split("perplexity=")[1].split()[0]) for r in records]
    assert ppl == sorted(ppl)
    for r in records:
        seq = str(r.seq)
        assert seq.startswith("MKT") and set(seq) <= set(STANDARD) and 10 <= len(seq) <= 25
        assert f"length={len(seq)}" in r.description
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [row["id"] for row in rows] == [r.id for r in records]
    assert all(float(row["molecular_weight"]) > 0 and row["gravy"] for row in rows)

    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--num-samples", "4", "--seed", "0", "--max-length", "40"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baselines"]["unigram"]["perplexity"] > 1 and report["perplexity"] > 1
    assert report["unigram_counted_tokens"] == report["predicted_tokens"]
    assert set(report["sample_metrics"]) == set(report["data_metrics"])
    assert report["sample_metrics"]["length_max"] <= 40


def test_bad_fasta_is_one_line_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.fasta"
    bad.write_text(">x\nMKT42\n")
    assert cli.main(["prepare", "--modality.name", "protein", "--data.paths", str(bad)]) == 2
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]  # after any progress bar
    assert "Traceback" not in err and last.startswith("arseq prepare: error:")
    assert "bad.fasta" in last and "record 1 (x)" in last and "'24'" in last


def test_drift_on_a_conditioned_model_never_touches_control_tokens(tmp_path, monkeypatch, capsys):
    """The tag's control token after BOS is neither an injection site nor an injected wrong token."""
    from arseq.analysis import drift as tf

    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "cache"))
    for name, n, seed in (("train.fasta", 40, 0), ("val.fasta", 8, 1)):
        records = fasta(tmp_path / name, n, seed).read_text().replace(" test protein", "").splitlines()
        tags = iter(["Nucleus-U", "Cytoplasm-S"] * n)
        (tmp_path / name).write_text("\n".join(f"{r} {next(tags)} test" if r.startswith(">") else r for r in records) + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
seed: 0
modality: {{name: protein, tokenizer: protein}}
data: {{paths: {tmp_path / "train.fasta"}, val_paths: {tmp_path / "val.fasta"}, block_size: 32, batch_size: 4}}
model: {{n_layer: 1, n_head: 2, d_model: 16}}
optim: {{lr: 1.0e-3, warmup_steps: 2}}
trainer: {{max_steps: 4, val_check_interval: 2, check_val_every_n_epoch: null, limit_val_batches: 2,
          accelerator: cpu, enable_progress_bar: false, enable_model_summary: false, default_root_dir: {tmp_path / "runs"}}}
""")
    assert cli.main(["train", "--config", str(config)]) == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    seen: dict = {}
    measure = tf.measure

    def spy(model, items, sites, offsets, **kw):
        seen.update(sites=sites, specials=kw["specials"], vocab=model.cfg.vocab_size)
        return measure(model, items, sites, offsets, **kw)

    monkeypatch.setattr(tf, "measure", spy)
    capsys.readouterr()
    # every position of every piece is a site: position 1 (the tag) would be one without the fix
    argv = [
        "analyze",
        "drift",
        "--checkpoint",
        str(ckpt),
        "--items",
        "20",
        "--positions",
        "40",
        "--offsets",
        "4",
        "--num-samples",
        "2",
        "--max-new-tokens",
        "10",
        "--bootstrap",
        "20",
        "--no-divergence",
    ]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["sites"] == len(seen["sites"]) > 0
    controls = set(range(seen["vocab"] - 3, seen["vocab"]))  # unknown, Cytoplasm-S, Nucleus-U after the residues
    assert controls <= set(seen["specials"])
    assert min(s.pos for s in seen["sites"]) == 2  # BOS at 0, the tag at 1
    wrong = {w for s in seen["sites"] for w in s.wrong.values() if w is not None}
    assert wrong and not wrong & controls
