"""`arseq score` and `arseq analyze drift` on the session's tiny text model: files parse back and agree."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from arseq.cli import main


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_score_table_per_token_and_json(trained, tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("the cat sat on the mat. a dog ran to the park.\n" * 3, encoding="utf-8")
    b.write_text("kod wer nia bs tgo ekil " * 6, encoding="utf-8")  # known letters, unknown words
    out = tmp_path / "scores.csv"
    assert main(["score", "--checkpoint", str(trained), "--data.paths", str(a), str(b), "--per-token", "--out", str(out), "--stride", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["name"].split("/")[-1]: r for r in _rows(out)}
    assert set(rows) == {"a.txt", "b.txt"}
    assert float(rows["a.txt"]["nll_mean"]) < float(rows["b.txt"]["nll_mean"])  # ranking by likelihood works
    tokens = _rows(tmp_path / "scores.tokens.csv")
    for name, r in rows.items():
        mine = [t for t in tokens if t["name"].endswith(name)]
        assert len(mine) == int(r["tokens"]) == len((tmp_path / name).read_text()) + 1  # every char and the EOS, once
        assert math.isclose(-sum(float(t["logprob"]) for t in mine), float(r["nll_sum"]), rel_tol=1e-6)
        assert all(int(t["rank"]) >= 1 for t in mine)
        assert math.isclose(float(r["perplexity"]), math.exp(float(r["nll_mean"])), rel_tol=1e-9)
    # the strided per-token path and the core's sequence_nll give the same sums
    assert main(["score", "--checkpoint", str(trained), "--data.paths", str(a), str(b), "--stride", "16"]) == 0
    plain = json.loads(capsys.readouterr().out)
    for x, y in zip(plain["items"], result["items"]):
        assert math.isclose(x["nll_sum"], y["nll_sum"], rel_tol=1e-5) and x["tokens"] == y["tokens"]
    assert main(["score", "--checkpoint", str(trained), "--data.paths", str(a), "--out", str(out)]) == 2  # no overwrite
    capsys.readouterr()


def test_analyze_drift_writes_parseable_files(trained, tmp_path, capsys):
    out = tmp_path / "drift"
    argv = [
        "analyze",
        "drift",
        "--checkpoint",
        str(trained),
        "--items",
        "6",
        "--positions",
        "3",
        "--offsets",
        "8",
        "--num-samples",
        "6",
        "--max-new-tokens",
        "40",
        "--bootstrap",
        "50",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "drift.json").read_text())
    assert saved["sites"] == printed["sites"] > 0
    assert set(saved["injected"]) >= {"random", "likeliest_wrong"}
    for r in saved["injected"].values():
        assert len(r["excess_nll"]["mean"]) == 8
        assert all(lo <= m + 1e-9 and m <= hi + 1e-9 for lo, m, hi in zip(r["kl"]["lo"], r["kl"]["mean"], r["kl"]["hi"]))
    excess = _rows(out / "excess_nll.csv")
    assert {r["kind"] for r in excess} == set(saved["injected"]) and len(excess) == 8 * len(saved["injected"])
    assert np.isclose(float(excess[0]["mean"]), saved["injected"][excess[0]["kind"]]["excess_nll"]["mean"][0])
    surv = _rows(out / "survival.csv")
    s = [float(r["survival"]) for r in surv]
    assert all(x >= y - 1e-12 for x, y in zip(s, s[1:])) and 0 <= s[-1] <= 1
    for png in ("excess_nll.png", "kl.png", "survival.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 2  # the files exist: refused without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("bad", [["--offsets", "0"], ["--offsets", "999"], ["--kinds", "nonsense"]])
def test_analyze_drift_bad_flags_are_one_line(trained, bad, capsys):
    code = main(["analyze", "drift", "--checkpoint", str(trained), "--num-samples", "0", *bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and bad[0].lstrip("-") in err[0]
