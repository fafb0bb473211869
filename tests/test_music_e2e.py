"""End to end through the CLI on 3 chorales: prepare -> train (a few steps) -> generate -> parse back -> evaluate."""

from __future__ import annotations

import json
import shutil

import lightning  # noqa: F401
import music21  # noqa: F401  (a hard dependency: a broken install must fail, not skip)
from music21 import converter  # noqa: E402

from arseq.artifacts import checkpoint  # noqa: E402
from arseq.cli import main  # noqa: E402
from arseq.modalities.music.corpus import bach_chorales  # noqa: E402
from arseq.tokenizers.score import ScoreTokenizer  # noqa: E402

CONFIG = """\
seed: 0
modality: {{name: music, workers: 1}}
data: {{paths: {data}, val_fraction: 0.34, block_size: 64, batch_size: 4}}
model: {{n_layer: 1, n_head: 2, d_model: 32, dropout: 0.0}}
optim: {{lr: 1.0e-3, min_lr: 1.0e-4, warmup_steps: 1, weight_decay: 0.0}}
trainer:
  max_steps: 3
  val_check_interval: 3
  check_val_every_n_epoch: null
  limit_val_batches: 2
  accelerator: cpu
  enable_progress_bar: false
  default_root_dir: {runs}
"""


def test_train_generate_parse_back_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    for _, path in bach_chorales()[:3]:
        shutil.copy(path, data)
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG.format(data=data, runs=tmp_path / "runs"))

    assert main(["prepare", "--config", str(config), "--check-roundtrip"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_items"] == 3 and stats["roundtrip_exact"] == 1.0 and stats["tokens_per_note"] < 3
    assert stats["item_tokens"]["items"] == 3 and 100 < stats["item_tokens"]["median"] <= stats["item_tokens"]["p95"]

    assert main(["train", "--config", str(config)]) == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    assert checkpoint.load(ckpt).meta.item_tokens == stats["item_tokens"]  # the pieces' token counts, for the sampling budget

    out = tmp_path / "samples"
    prompt = next(data.iterdir())
    original = prompt.read_bytes()
    args = ["--checkpoint", str(ckpt), "--num-samples", "2", "--max-new-tokens", "120", "--seed", "0"]
    assert main(["generate", *args, "--bars", "2", "--out", str(out)]) == 0
    assert main(["generate", *args, "--prompt", str(prompt), "--prompt-bars", "1", "--out", str(out / "cont")]) == 0
    tok = ScoreTokenizer()
    for folder, n_bars in ((out, None), (out / "cont", 1)):
        written = sorted(folder.glob("sample_*"))
        assert [p.suffix for p in written] == [".mid", ".musicxml", ".png"] * 2
        for p in written:
            if p.suffix == ".png":
                assert p.stat().st_size > 100
                continue
            score = converter.parse(p)  # every sample parses back
            if p.suffix == ".musicxml" and score.recurse().notes.first() is not None:
                events = tok.decode_events(tok.encode(score))
                assert events.repairs == 0
                if n_bars is not None:  # the prompt's first bar is kept as it is
                    first = tok.extract(converter.parse(prompt))
                    bar_end = first.bars[0].start + first.bars[0].length
                    want = sorted((n.part, n.onset, n.pitch) for n in first.notes if n.onset < bar_end)
                    assert sorted((n.part, n.onset, n.pitch) for n in events.notes if n.onset < bar_end) == want
    assert prompt.read_bytes() == original  # the user's file is never touched

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--num-samples", "2", "--max-new-tokens", "80", "--seed", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["nll_per_note"] > 0 and report["baselines"]["unigram"]["loss"] > 1.0 and report["unigram_counted_tokens"] == report["predicted_tokens"]
    )
    assert "in_key_rate" in report["data_metrics"]
