"""Checkpoint files that survive a kill at any moment, and that load without running code.

Lightning's own writer stages the file in $TMPDIR and moves it, which is a copy (truncate, then write)
when $TMPDIR is another filesystem such as a tmpfs: SIGKILL during the copy left `last.ckpt` empty. Here
the file is staged beside its destination, flushed to disk and renamed over it (arseq.atomic), so the
previous checkpoint stays whole until the new one is complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from arseq.atomic import atomic_write, remove_stale_temps


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Resuming reads tensors and plain containers only, whatever the caller asked for.
        return torch.load(path, map_location=map_location, weights_only=True)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        Path(path).unlink(missing_ok=True)


def clean_checkpoint_folder(folder: Path) -> list[Path]:
    """Remove what a killed run left while writing checkpoints (temporary files); return them."""
    return remove_stale_temps(folder, ".ckpt")
