"""`--device` names as torch devices this machine has, or one line saying why not."""

from __future__ import annotations

import torch

from arseq.errors import DataError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> torch.device:
    """`--device` as a torch.device this machine has (default: cuda when available), else one line."""
    try:
        device = torch.device(name or default_device())
    except (RuntimeError, ValueError):
        raise DataError(f"--device {name}: not a device name (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DataError(f"--device {name}: unsupported device type {device.type!r} (cpu, cuda, cuda:N, mps)")
    return device
