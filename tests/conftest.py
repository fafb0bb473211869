"""Shared fixtures: an isolated token cache, a tiny corpus, and one tiny trained text model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_CONFIG = """
seed: 7
modality: {{name: text, tokenizer: char}}
data: {{paths: {data}, val_fraction: 0.1, block_size: 32, batch_size: 8}}
model: {{n_layer: 2, n_head: 2, d_model: 32}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5}}
trainer:
  max_steps: 60
  val_check_interval: 30
  check_val_every_n_epoch: null
  limit_val_batches: 4
  log_every_n_steps: 10
  accelerator: cpu
  devices: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
"""


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small, learnable corpus: a handful of sentences repeated with variations."""
    words = ["the cat sat on the mat.", "a dog ran to the park.", "we like to read books.", "birds sing at dawn."]
    lines = [f"{words[i % 4]} {words[(i * 3 + 1) % 4]}" for i in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("runs")
    path = root / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(data=corpus, root=root / "out"), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained(tiny_config, tmp_path_factory) -> Path:
    """Train the tiny model once for the whole session; return its run directory."""
    from arseq.cli import main

    os.environ["ARSEQ_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "cache")
    assert main(["train", "--config", str(tiny_config)]) == 0
    runs = sorted((tiny_config.parent / "out" / "text").glob("version_*"))
    return runs[-1]
