"""Text (`--gap`) and protein (`--redesign`) infilling through `generate`: the kept parts come back exactly, the
protein span has the length asked for, and bad requests are one line naming the flag."""

from __future__ import annotations

import numpy as np
import pytest
from Bio import SeqIO

from arseq.cli import main

CONFIG = """\
seed: 0
modality: {{name: {modality}}}
data: {{paths: {data}, val_fraction: 0.1, block_size: 64, batch_size: 8, fim_rate: 0.5}}
model: {{n_layer: 1, n_head: 2, d_model: 32}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 2}}
trainer: {{max_steps: 10, val_check_interval: 10, check_val_every_n_epoch: null, limit_val_batches: 2, accelerator: cpu,
  enable_progress_bar: false, enable_model_summary: false, logger: false, default_root_dir: {runs}}}
"""
STANDARD = "ACDEFGHIKLMNPQRSTVWY"


def _train(tmp_path, modality: str, data) -> str:
    config = tmp_path / f"{modality}.yaml"
    config.write_text(CONFIG.format(modality=modality, data=data, runs=tmp_path / modality))
    assert main(["train", "--config", str(config)]) == 0
    return str(next((tmp_path / modality).rglob("last.ckpt")))


def _error(capsys) -> str:
    """The one line `arseq generate` says on a bad request (stderr may also hold other loggers' lines)."""
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("arseq generate: error")]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.slow
def test_text_gap_keeps_both_sides(tmp_path, corpus, capsys):
    ckpt = _train(tmp_path, "text", corpus)
    out = tmp_path / "filled"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                ckpt,
                "--prompt",
                "the cat [...] the mat.",
                "--gap",
                "[...]",
                "--num-samples",
                "3",
                "--max-new-tokens",
                "12",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    texts = [p.read_text() for p in sorted(out.glob("sample_*.txt"))]
    assert len(texts) == 3 and all(t.startswith("the cat ") and t.endswith(" the mat.") for t in texts)
    assert all("[...]" not in t for t in texts)
    for prompt in ("no marker here", "two [...] and [...]"):
        assert main(["generate", "--checkpoint", ckpt, "--prompt", prompt, "--gap", "[...]"]) == 2
        assert "--gap" in _error(capsys)


def test_gap_on_a_model_without_fim(trained, capsys):
    assert main(["generate", "--checkpoint", str(trained), "--prompt", "the [...] mat", "--gap", "[...]"]) == 2
    assert "fill-in-the-middle" in capsys.readouterr().err


@pytest.mark.slow
def test_protein_redesign_keeps_the_sides_byte_for_byte(tmp_path, capsys):
    rng = np.random.default_rng(0)
    train = tmp_path / "train.fasta"
    train.write_text("".join(f">p{i}\nM{''.join(rng.choice(list(STANDARD), int(rng.integers(40, 70))))}\n" for i in range(60)))
    ckpt = _train(tmp_path, "protein", train)
    scaffold = "M" + "".join(rng.choice(list(STANDARD), 79))
    prompt = tmp_path / "scaffold.fasta"
    prompt.write_text(f">scaffold\n{scaffold}\n")
    out = tmp_path / "designs.fasta"
    assert (
        main(
            ["generate", "--checkpoint", ckpt, "--prompt", str(prompt), "--redesign", "30-45", "--num-samples", "4", "--seed", "0", "--out", str(out)]
        )
        == 0
    )
    records = list(SeqIO.parse(out, "fasta"))
    assert len(records) == 4
    for r in records:
        seq = str(r.seq)
        assert len(seq) == 80 and seq[:29] == scaffold[:29] and seq[45:] == scaffold[45:]
        assert "redesigned=30-45" in r.description
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                ckpt,
                "--prompt",
                str(prompt),
                "--redesign",
                "30-45",
                "--redesign-length",
                "5-8",
                "--num-samples",
                "3",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "short.fasta"),
            ]
        )
        == 0
    )
    for r in SeqIO.parse(tmp_path / "short.fasta", "fasta"):
        assert 29 + 5 + 35 <= len(r.seq) <= 29 + 8 + 35 and str(r.seq).endswith(scaffold[45:])
    for flags, said in (
        (["--redesign", "30-45,50-60"], "one span"),
        (["--redesign", "70-90"], "outside"),
        (["--redesign", "1-80"], "whole sequence"),
        (["--redesign", "30-45", "--redesign-length", "9-3"], "MIN-MAX"),
    ):
        assert main(["generate", "--checkpoint", ckpt, "--prompt", str(prompt), *flags]) == 2
        assert said in _error(capsys)
