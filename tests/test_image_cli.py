"""The image modality through the CLI: tiny digits train -> generate (labels, completion) -> evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from arseq import cli

TINY = """
seed: 7
modality: {{name: image, mode: L, size: 8, patch_size: 1, codebook_size: 17}}
data: {{source: digits, val_fraction: 0.1653, block_size: 67, batch_size: 16}}
model: {{n_layer: 1, n_head: 2, d_model: 32}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5}}
trainer:
  max_steps: 40
  val_check_interval: 40
  check_val_every_n_epoch: null
  limit_val_batches: 2
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
"""


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("ARSEQ_CACHE_DIR", str(root / "cache"))
    config = root / "tiny.yaml"
    config.write_text(TINY.format(root=root / "out"), encoding="utf-8")
    assert cli.main(["train", "--config", str(config)]) == 0
    yield sorted((root / "out" / "image").glob("version_*"))[-1] / "checkpoints" / "last.ckpt"
    mp.undo()


def test_generate_writes_pngs_and_grid(ckpt, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--num-samples", 4, "--seed", 1, "--out", tmp_path / "s")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert "grid.png" in names and len([n for n in names if n.startswith("sample_")]) == 4
    assert Image.open(tmp_path / "s" / "grid.png").size == (2 * 66 + 2, 2 * 66 + 2)  # 2x2 cells of 64 px
    assert all(Image.open(tmp_path / "s" / n).size == (8, 8) for n in names if n.startswith("sample_"))


def test_label_conditioning_changes_samples(ckpt, tmp_path, capsys):
    for label in ("0", "1"):
        assert run(capsys, "generate", "--checkpoint", ckpt, "--num-samples", 8, "--seed", 3, "--label", label, "--out", tmp_path / label)[0] == 0
    zeros = sorted((tmp_path / "0").glob("sample_*.png"))
    ones = sorted((tmp_path / "1").glob("sample_*.png"))
    assert [p.name for p in zeros] == [f"sample_{i:03d}_0.png" for i in range(8)]
    assert any(not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(zeros, ones))


def test_completion_keeps_the_prompt_rows(ckpt, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digit = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    prompt = tmp_path / "zero.png"
    Image.fromarray(digit, "L").save(prompt)
    code, _, err = run(
        capsys,
        "generate",
        "--checkpoint",
        ckpt,
        "--prompt",
        prompt,
        "--prompt-rows",
        4,
        "--label",
        0,
        "--num-samples",
        2,
        "--seed",
        0,
        "--out",
        tmp_path / "c",
    )
    assert code == 0, err
    for path in (tmp_path / "c").glob("sample_*.png"):
        assert np.array_equal(np.asarray(Image.open(path))[:4], digit[:4])
    assert Image.open(tmp_path / "c" / "completion.png").size == (3 * 66 + 2, 66 + 2)
    for given, said in [(tmp_path, "a folder; give one file"), (tmp_path / "none.png", "no such file")]:
        code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--prompt", given)
        assert code == 2 and err.strip() == f"arseq generate: error: --prompt {given}: {said}", err


def test_evaluate_reports_bits_per_dim_and_baselines(ckpt, capsys):
    code, out, err = run(capsys, "evaluate", "--checkpoint", ckpt, "--num-samples", 2)
    assert code == 0, err
    result = json.loads(out)
    b = result["baselines"]
    assert b["uniform"] == pytest.approx(4.087, abs=1e-3) and b["per_position"] == pytest.approx(2.42, abs=0.005)
    assert 0 < result["bits_per_dim"] < b["uniform"]  # a 40-step model already beats guessing
    assert result["sample_metrics"]["complete_fraction"] == 1.0
    assert set(result["sample_metrics"]) == set(result["data_metrics"])


def test_bad_label_is_one_line_error(ckpt, capsys):
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--label", "cat")
    assert code != 0 and "unknown class label" in err and "Traceback" not in err


def test_evaluate_reads_the_class_of_samples_back_with_a_classifier(ckpt, capsys):
    """--cond label=3: each sample's class by a logistic regression fitted on the training digits; the same
    classifier on the real held-out digits (their own labels) is the ceiling, and it must be a good one."""
    code, out, err = run(capsys, "evaluate", "--checkpoint", ckpt, "--num-samples", 4, "--seed", 0, "--cond", "label=3")
    assert code == 0, err
    result = json.loads(out)
    obeyed = result["conditions_obeyed"]["label"]
    assert obeyed["asked"] == "3" and obeyed["samples_read"] == 4 and 0 <= obeyed["share"] <= 1
    assert obeyed["held_out_read"] == 297 and obeyed["held_out_agreement"] > 0.9
    assert obeyed["training_share"] == pytest.approx(0.1, abs=0.02)
    label = result["conditions"]["label"]
    assert label["items"] == 297 and 0 <= label["accuracy"] <= 1 and label["perplexity_true"] > 1
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--label", "3", "--cond", "label=4")
    assert code == 2 and "give the class once" in err and "Traceback" not in err


def test_a_class_asked_for_samples_at_the_image_defaults_for_conditioned_samples(ckpt, capsys):
    """Asked for a class, images sample with guidance 1.5 (the modality's `conditioned_sampling`);
    without one at the core's defaults; an option given wins either way."""
    from arseq.app.planning import make_plan
    from arseq.artifacts.checkpoint import load
    from arseq.modalities import Request, SamplingOptions

    loaded = load(ckpt)
    options = loaded.modality.generate_options
    asked = make_plan(loaded, Request(2, options=options(label="3")))
    assert (asked.cfg.temperature, asked.cfg.guidance) == (1.0, 1.5) and asked.guide is not None
    free = make_plan(loaded, Request(2, options=options()))
    assert (free.cfg.temperature, free.cfg.guidance) == (1.0, 1.0) and free.guide is None
    mine = make_plan(loaded, Request(2, sampling=SamplingOptions(guidance=1.0, temperature=0.9), conditions=["label=3"]))
    assert (mine.cfg.temperature, mine.cfg.guidance) == (0.9, 1.0) and mine.guide is None
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--label", "3", "--draft", "ngram")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "add --guidance 1" in err
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--label", "3", "--draft", "ngram", "--guidance", "1", "--num-samples", 1)
    assert code == 0, err
