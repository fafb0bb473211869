"""arseq: train and sample autoregressive transformers on text, music, images and proteins.

`arseq.load(path)` opens a checkpoint or export for generating, evaluating and scoring from Python.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "__version__":  # written once, in pyproject.toml; read lazily (importlib.metadata costs ~40 ms)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("arseq")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0+unknown"
    if name in ("load", "Model"):  # lazily: `import arseq` (and the CLI's start) stays free of torch
        from arseq import api

        return getattr(api, name)
    raise AttributeError(f"module 'arseq' has no attribute {name!r}")
