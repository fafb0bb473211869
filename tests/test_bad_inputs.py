"""Bad configs and flags: exit code 2, one line on stderr, no traceback, nothing written or changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from arseq.cli import main

CONFIG = """
modality: {{name: text, tokenizer: char}}
data: {{paths: {data}, val_fraction: 0.1, block_size: 16, batch_size: 4}}
model: {{n_layer: 1, n_head: 2, d_model: 16}}
trainer: {{max_steps: 3, accelerator: cpu, enable_progress_bar: false, default_root_dir: {root}}}
"""

# (flags added to `arseq train --config C`, text the one-line error must contain)
TRAIN_FLAGS = [
    (["--model.d_model", "-32"], "model.d_model"),
    (["--model.n_head", "0"], "model.n_head"),
    (["--model.n_layer", "0"], "model.n_layer"),
    (["--model.d_model", "30", "--model.n_head", "4"], "model.d_model 30 must split into model.n_head 4 heads of even width"),
    (["--model.dropout", "1.5"], "dropout"),
    (["--optim.lr", "0"], "optim.lr"),
    (["--optim.min_lr", "-1"], "optim.min_lr"),
    (["--optim.warmup_steps", "-1"], "optim.warmup_steps"),
    (["--optim.beta2", "1.0"], "optim.beta"),
    (["--trainer.max_steps", "-5"], "trainer.max_steps"),
    (["--trainer.max_steps", "0"], "trainer.max_steps"),
    (["--data.block_size", "0"], "data.block_size"),
    (["--model.n_layerz", "2"], "n_layerz"),
]


def _tree(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*")}


@pytest.fixture
def setup(tmp_path: Path, corpus: Path) -> tuple[Path, Path]:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(data=corpus, root=tmp_path / "runs"), encoding="utf-8")
    return tmp_path, config


def _assert_refused(argv: list[str], expect: str, root: Path, capsys) -> None:
    before = _tree(root)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and expect in err[0], err[0]
    assert _tree(root) == before  # nothing written or changed


@pytest.mark.parametrize("flags,expect", TRAIN_FLAGS, ids=[" ".join(f) for f, _ in TRAIN_FLAGS])
def test_bad_train_flag_is_one_line_exit_2(setup, flags, expect, capsys):
    root, config = setup
    _assert_refused(["train", "--config", str(config), *flags], expect, root, capsys)


@pytest.mark.parametrize("section", ["trainer: [1, 2]", "model: 3", "optim: [lr]"])
def test_a_section_that_is_not_a_mapping_is_one_line(setup, section, capsys):
    root, config = setup
    config.write_text(config.read_text(encoding="utf-8") + section + "\n", encoding="utf-8")
    _assert_refused(["train", "--config", str(config)], section.split(":")[0], root, capsys)


# (flags added to `arseq generate --checkpoint LAST --out OUT`, text the one-line error must contain)
GENERATE_FLAGS = [
    (["--device", "bogus"], "--device bogus"),
    (["--num-samples", "0"], "--num-samples"),
    (["--batch-size", "0"], "--batch-size"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    (["--temperature", "-1"], "--temperature must be >= 0, got -1.0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be > 0, got 0.0"),
]
if not __import__("torch").cuda.is_available():
    GENERATE_FLAGS.append((["--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("flags,expect", GENERATE_FLAGS, ids=[" ".join(f) for f, _ in GENERATE_FLAGS])
def test_bad_generate_flag_is_one_line_exit_2(trained, tmp_path, flags, expect, capsys):
    last = trained / "checkpoints" / "last.ckpt"
    _assert_refused(["generate", "--checkpoint", str(last), "--out", str(tmp_path / "out"), *flags], expect, tmp_path, capsys)


@pytest.mark.parametrize("cut", [0, 7, 0.5], ids=["0-byte", "7 bytes", "half"])
def test_truncated_safetensors_is_one_line(trained, tmp_path, cut, capsys):
    export = tmp_path / "exp"
    assert main(["export", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--out", str(export)]) == 0
    weights = export / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    capsys.readouterr()
    _assert_refused(["generate", "--checkpoint", str(export), "--out", str(tmp_path / "o")], "model.safetensors", tmp_path, capsys)


def test_resuming_a_run_of_another_model_size_is_one_line(trained, tiny_config, tmp_path, capsys):
    last = trained / "checkpoints" / "last.ckpt"
    argv = [
        "train",
        "--config",
        str(tiny_config),
        "--ckpt_path",
        str(last),
        "--model.d_model",
        "48",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
    ]
    _assert_refused(argv, "d_model 32 vs 48", tmp_path, capsys)
