"""Loading a checkpoint or export never imports a module the file names, unless the user allows it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from arseq.app.export import export_model
from arseq.artifacts import checkpoint
from arseq.cli import main
from arseq.modalities import DataError

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("imported")
from arseq.modalities.text import TextModality as X
"""


def _best(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("best-*.ckpt"))[-1]


@pytest.fixture
def evil(tmp_path, monkeypatch, trained):
    """A weights-only-clean checkpoint whose modality is `evil_mod:X`, with evil_mod importable."""
    marker = tmp_path / "marker"
    (tmp_path / "evil_mod.py").write_text(EVIL.format(marker=str(marker)), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_mod", raising=False)
    ckpt = torch.load(_best(trained), map_location="cpu", weights_only=True)
    ckpt["arseq"]["modality"]["name"] = "evil_mod:X"
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    yield path, marker
    sys.modules.pop("evil_mod", None)


def test_a_checkpoint_cannot_make_arseq_import_a_module(evil, capsys):
    path, marker = evil
    with pytest.raises(DataError, match="evil_mod:X.*--trust-modality-import"):
        checkpoint.load(path)
    assert main(["generate", "--checkpoint", str(path), "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "import path stored in the file" in err[0] and "Traceback" not in err[0]
    assert not marker.exists() and "evil_mod" not in sys.modules


def test_an_export_cannot_make_arseq_import_a_module(evil, tmp_path, trained, monkeypatch):
    monkeypatch.delitem(sys.modules, "this", raising=False)  # importing `this` prints the Zen of Python
    out = export_model(checkpoint.load(_best(trained)), tmp_path / "export")
    config = (out / "config.json").read_text(encoding="utf-8")
    (out / "config.json").write_text(config.replace('"name": "text"', '"name": "this:Modality"'), encoding="utf-8")
    with pytest.raises(DataError, match="this:Modality"):
        checkpoint.load(out)
    assert "this" not in sys.modules


def test_the_user_can_allow_the_import_or_name_the_modality(evil, capsys):
    path, marker = evil
    assert main(["generate", "--checkpoint", str(path), "--modality", "text", "--max-new-tokens", "4", "--seed", "1"]) == 0
    assert not marker.exists()  # the user's choice replaced the file's
    assert main(["generate", "--checkpoint", str(path), "--trust-modality-import", "--max-new-tokens", "4", "--seed", "1"]) == 0
    assert marker.exists()  # explicitly allowed: now the file's module was imported
