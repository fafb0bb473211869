"""arseq: train and sample autoregressive transformers on text, music, images and proteins.

`arseq.load(path)` opens a checkpoint or export for generating, evaluating and scoring from Python.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):  # lazily: `import arseq` (and the CLI's start) stays free of torch
        from arseq import api

        return getattr(api, name)
    raise AttributeError(f"module 'arseq' has no attribute {name!r}")
