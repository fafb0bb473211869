"""The Python API mirrors the CLI: same options, same samples, same files, same errors."""

from __future__ import annotations

import json

import pytest

import arseq
from arseq.cli import main
from arseq.errors import DataError


def test_generate_from_python_equals_the_cli(trained, tmp_path, capsys):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    model = arseq.load(ckpt)
    samples = model.generate(n=3, temperature=0.7, top_k=5, max_new_tokens=20, seed=4, out=tmp_path / "py")
    assert len(samples) == 3 and all(len(s.tokens) <= 20 for s in samples)
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                ckpt,
                "--num-samples",
                "3",
                "--temperature",
                "0.7",
                "--top-k",
                "5",
                "--max-new-tokens",
                "20",
                "--seed",
                "4",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    for i in range(3):
        name = f"sample_{i:03d}.txt"
        assert (tmp_path / "py" / name).read_text() == (tmp_path / "cli" / name).read_text()
    with pytest.raises(DataError, match="already exists"):
        model.generate(n=3, seed=4, out=tmp_path / "py")


def test_evaluate_and_score_from_python(trained, capsys):
    model = arseq.load(trained / "checkpoints" / "last.ckpt")
    report = model.evaluate()
    assert main(["evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt")]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert report["loss"] == pytest.approx(cli["loss"]) and report["items"] == cli["items"]
    tok = model.loaded.tokenizer
    good, shuffled = [tok.bos_id, *tok.encode("the cat sat on the mat.")], [tok.bos_id, *tok.encode("mat the. on cat sat the")]
    nll = model.score([good, shuffled])
    assert nll[0] < nll[1]  # the learned sentence is likelier than its words scrambled


def test_unknown_options_are_one_line(trained):
    model = arseq.load(trained / "checkpoints" / "last.ckpt")
    assert "temperature" in model.options() and "checkpoint" not in model.options()
    with pytest.raises(DataError, match="unknown option.*temprature"):
        model.generate(temprature=0.5)


def test_same_seed_same_samples_at_any_batch_size(trained, capsys):
    model = arseq.load(trained / "checkpoints" / "last.ckpt")
    runs = [[s.tokens for s in model.generate(n=5, seed=11, max_new_tokens=16, batch_size=b)] for b in (1, 2, 5)]
    assert capsys.readouterr().out == ""  # the samples are returned, not printed (printing is the CLI's)
    assert runs[0] == runs[1] == runs[2]
    assert len({tuple(t) for t in runs[0]}) > 1  # and the samples differ from each other
