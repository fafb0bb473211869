"""Music infilling end to end: a tiny FIM-trained model regenerates bars of a chorale through `generate --keep-bars`;
every sample has exactly the piece's bars in every part, keeps the kept bars note for note, and parses back."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from music21 import converter

from arseq.analysis.revise import score_tokenizer
from arseq.cli import main
from arseq.errors import DataError
from arseq.modalities.infill_ranges import parse_ranges
from arseq.modalities.music.corpus import bach_chorales
from arseq.modalities.music.infill import kept_notes
from arseq.tokenizers.performance import PerformanceTokenizer
from arseq.tokenizers.score import ScoreTokenizer

CONFIG = """\
seed: 0
modality: {{name: music, workers: 1, transpose: [0, 0]}}
data: {{paths: {data}, val_fraction: 0.34, block_size: 256, batch_size: 4, fim_rate: {rate}}}
model: {{n_layer: 1, n_head: 2, d_model: 32, dropout: 0.0}}
optim: {{lr: 1.0e-2, min_lr: 1.0e-3, warmup_steps: 1, weight_decay: 0.0}}
trainer:
  max_steps: 60
  val_check_interval: 60
  check_val_every_n_epoch: null
  limit_val_batches: 2
  accelerator: cpu
  enable_progress_bar: false
  default_root_dir: {runs}
"""


@pytest.fixture(scope="module")
def chorales(tmp_path_factory):
    """Three chorales, a FIM model and a model without FIM trained a few steps on them."""
    root = tmp_path_factory.mktemp("infill")
    data = root / "data"
    data.mkdir()
    for _, path in bach_chorales()[:3]:
        shutil.copy(path, data)
    models = {}
    for rate in (0.5, 0.0):
        config = root / f"fim{rate}.yaml"
        config.write_text(CONFIG.format(data=data, rate=rate, runs=root / f"runs{rate}"))
        assert main(["train", "--config", str(config)]) == 0
        models[rate] = next((root / f"runs{rate}").rglob("last.ckpt"))
    return data, models


@pytest.mark.slow
def test_keep_bars_regenerates_exactly_the_gap(chorales, tmp_path):
    data, models = chorales
    prompt = sorted(data.iterdir())[0]
    tok = ScoreTokenizer()
    original = tok.decode_events(tok.encode(converter.parse(prompt)))
    n = len(original.bars)
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(models[0.5]),
                "--prompt",
                str(prompt),
                "--keep-bars",
                f"1-4,9-{n}",
                "--num-samples",
                "3",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = sorted(out.glob("sample_*.musicxml"))
    assert len(written) == 3 and len(list(out.glob("sample_*.png"))) == 3 and len(list(out.glob("sample_*.mid"))) == 3
    kept = [*range(0, 4), *range(8, n)]
    for path in written:
        score = converter.parse(path)  # parses back
        assert [len(p.getElementsByClass("Measure")) for p in score.parts] == [n] * len(score.parts)  # every part, every bar
        events = tok.decode_events(tok.encode(score))
        assert len(events.bars) == n and events.repairs == 0
        assert [b.ts for b in events.bars[4:8]] == [b.ts for b in original.bars[4:8]]  # the meter of the gap
        assert kept_notes(events, kept) == kept_notes(original, kept)  # the kept bars, note for note


@pytest.mark.slow
def test_keep_bars_errors_are_one_line(chorales, capsys):
    data, models = chorales
    prompt = str(sorted(data.iterdir())[0])
    base = ["generate", "--prompt", prompt, "--num-samples", "1"]
    assert main([*base, "--checkpoint", str(models[0.0]), "--keep-bars", "1-4,9-10"]) == 2
    assert "fill-in-the-middle" in capsys.readouterr().err
    for spec, said in (("1-4,3-12", "overlap"), ("1-400", "outside"), ("1-2,5-6,9-10", "one run"), ("x", "ranges")):
        assert main([*base, "--checkpoint", str(models[0.5]), "--keep-bars", spec]) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("arseq generate: error")]
        assert len(err) == 1 and said in err[0] and "--keep-bars" in err[0]


@pytest.mark.slow
def test_revise_keeps_only_improvements(chorales, tmp_path, capsys):
    import json

    data, models = chorales
    prompt = str(sorted(data.iterdir())[1])
    capsys.readouterr()
    assert (
        main(["revise", "--checkpoint", str(models[0.5]), "--samples", prompt, "--rounds", "2", "--candidates", "2", "--out", str(tmp_path / "rev")])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    counts = [r["errors"] for r in report["rounds"]]
    assert len(counts) == 3 and counts[2] <= counts[1] <= counts[0]  # a change never adds errors
    assert all(0 <= r["error_rate"] <= 1 and r["nll_total"] > 0 for r in report["rounds"])
    score = converter.parse(tmp_path / "rev" / "sample_000.musicxml")
    assert len(score.parts) >= 1
    assert main(["revise", "--checkpoint", str(models[0.0]), "--samples", prompt]) == 2
    assert "fill-in-the-middle" in capsys.readouterr().err


def test_parse_ranges():
    assert parse_ranges("9-12, 1-4", 12, "--keep-bars", "bar") == [(0, 4), (8, 12)]
    assert parse_ranges("3", 5, "--keep-bars", "bar") == [(2, 3)]
    with pytest.raises(DataError, match="first >= 1"):
        parse_ranges("4-2", 12, "--keep-bars", "bar")


@pytest.mark.slow
def test_drift_revises_free_running_samples(chorales, tmp_path, capsys):
    """`analyze drift --revise-rounds`: the free-running samples re-encoded, then revised, each measured again;
    revision starts from the re-encoded samples and never adds errors by the modality's predicate."""
    import json

    data, models = chorales
    args = ["analyze", "drift", "--data.paths", str(sorted(data.iterdir())[0]), "--items", "2", "--positions", "1", "--offsets", "4"]
    args += ["--num-samples", "3", "--max-new-tokens", "60", "--bootstrap", "20", "--no-divergence", "--seed", "0"]
    out = tmp_path / "drift"
    capsys.readouterr()
    assert main([*args, "--checkpoint", str(models[0.5]), "--revise-rounds", "2", "--revise-candidates", "2", "--out", str(out)]) == 0
    revision = json.loads(capsys.readouterr().out)["free_running"]["revision"]
    rounds = revision["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["errors"] <= rounds[1]["errors"] <= rounds[0]["errors"]
    for arm in ("reencoded", "revised"):
        curve = revision[arm]["curve"]
        assert curve["sequences"] == 3 and curve["tokens"] > 0 and 0 <= curve["error_rate"] <= 1
        assert all(a >= b for a, b in zip(curve["survival"], curve["survival"][1:]))  # S(n) never rises
        assert (out / f"survival_{arm}.csv").read_text().startswith("n,survival") and (out / f"survival_{arm}.png").stat().st_size > 0
    assert main([*args, "--checkpoint", str(models[0.0]), "--revise-rounds", "1"]) == 2
    assert "--revise-rounds" in capsys.readouterr().err


def test_revision_needs_score_tokens():
    """Revision resamples bars: a model of performance tokens (no bars) or of another modality is refused in one line."""
    score = ScoreTokenizer()
    assert score_tokenizer(SimpleNamespace(modality=SimpleNamespace(name="music"), tokenizer=score), "revise") is score
    with pytest.raises(DataError, match="--samples: a model of performance tokens has no bars"):
        score_tokenizer(SimpleNamespace(modality=SimpleNamespace(name="music"), tokenizer=PerformanceTokenizer()), "--samples")
    with pytest.raises(DataError, match="the text modality has no weakest-span search"):
        score_tokenizer(SimpleNamespace(modality=SimpleNamespace(name="text"), tokenizer=score), "revise")
