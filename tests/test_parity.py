"""One tiny prepare -> train -> generate -> evaluate run through the CLI for every registered modality.

Modalities come from `arseq.modalities.loadable()` at collection time, built-ins and installed plugins
alike, so a new modality is covered without touching this file. Each provides its tiny data through
`Modality.demo_config`; one that returns None is skipped with the reason.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import fields

import pytest
import yaml

from arseq.cli import main
from arseq.modalities import loadable

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # broken plugins are test_plugins.py's business
    MODALITIES = {entry.name: cls for entry, cls in loadable()}


def merged(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def smoke_config(name: str, root) -> dict:
    return {
        "seed": 3,
        "modality": {"name": name},
        "data": {"val_fraction": 0.2, "block_size": 64, "batch_size": 4},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
        "optim": {"lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_steps": 2},
        "trainer": {
            "max_steps": 10,
            "val_check_interval": 5,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 2,
            "log_every_n_steps": 5,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root / "runs"),
        },
    }


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_prepare_train_generate_evaluate(name, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    demo = MODALITIES[name]().demo_config(tmp_path / "data")
    if demo is None:
        pytest.skip(f"modality {name!r} provides no demo_config() for a smoke run")
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(merged(smoke_config(name, tmp_path), demo)))

    assert main(["prepare", "--config", str(config)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train_items"] > 0 and stats["val_items"] > 0 and stats["vocab_size"] > 3

    assert main(["train", "--config", str(config)]) == 0
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))

    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(ckpt), "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    options = MODALITIES[name].generate_options
    for f in fields(options) if options is not None else ():  # every typed option, with its help text
        described = re.search(rf"^\s+{f.name}: (.+)$", options.__doc__, re.M)
        assert f"--{f.name}" in shown and described and " ".join(described.group(1).split()[:4]) in shown, f.name

    out = tmp_path / "samples"
    assert main(["generate", "--checkpoint", str(ckpt), "--num-samples", "2", "--max-new-tokens", "32", "--seed", "0", "--out", str(out)]) == 0
    written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else [out]
    assert written and all(p.stat().st_size > 0 for p in written)

    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--num-samples", "2", "--max-new-tokens", "32", "--seed", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["items"] > 0 and result["loss"] > 0 and result["sample_metrics"].keys() == result["data_metrics"].keys()
