"""Image figures that need no model: reconstruction PSNR, and the bits/dim of a count baseline over codes."""

from __future__ import annotations

import math

import numpy as np


def psnr_from_mse(mse: float) -> float | None:
    """PSNR in dB; None when the reconstruction is exact (infinite PSNR does not fit in JSON)."""
    return None if mse == 0 else round(10 * math.log10(255.0**2 / mse), 3)


def baseline_bits(train: np.ndarray, val: np.ndarray, k: int) -> dict[str, float]:
    """Mean bits per image on `val` (items, positions) of count models fitted on `train`, add-one smoothed:
    uniform over the k codes; a histogram per position; per position, a histogram given the previous
    code in raster order (the first position uses its plain histogram)."""
    n_pos = train.shape[1]
    per_pos = np.ones((n_pos, k))
    prev = np.ones((n_pos, k, k))
    for t in range(n_pos):
        per_pos[t] += np.bincount(train[:, t], minlength=k)
        if t:
            np.add.at(prev[t], (train[:, t - 1], train[:, t]), 1)
    per_pos /= per_pos.sum(1, keepdims=True)
    prev /= prev.sum(2, keepdims=True)
    pos = np.arange(n_pos)[None, :]
    pos_bits = -np.log2(per_pos[pos, val]).sum(1)
    prev_bits = -np.log2(per_pos[0, val[:, 0]]) - np.log2(prev[pos[:, 1:], val[:, :-1], val[:, 1:]]).sum(1)
    return {"uniform": n_pos * math.log2(k), "per_position": float(pos_bits.mean()), "previous_pixel": float(prev_bits.mean())}
