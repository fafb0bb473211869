"""Fitting the image codebook and measuring how well it generalises: a second fit that leaves out 10% of the
images (at least one, chosen by the seed) reconstructs them, and both PSNRs go in the tokenizer's `fit_stats`."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from arseq.modalities.image.metrics import psnr_from_mse
from arseq.tokenizers.patch import PatchTokenizer


def squared_error(tok: PatchTokenizer, pixels: np.ndarray) -> float:
    """Mean squared pixel error of the image after encoding and decoding with `tok`."""
    rec = tok.decode_pixels(tok.codes(pixels) + tok.code_offset)
    return float(np.mean((rec.astype(np.float64) - pixels) ** 2))


def fit_codebook(pixels: list[np.ndarray], fit: Callable[[list[np.ndarray]], PatchTokenizer], seed: int) -> PatchTokenizer:
    """`fit(pixels)`, with fit and held-out reconstruction figures in its `fit_stats`."""
    tok = fit(pixels)
    mse = float(np.mean([squared_error(tok, p) for p in pixels]))
    stats: dict[str, Any] = {"fit_images": len(pixels), "fit_psnr_db": psnr_from_mse(mse), "fit_exact": mse == 0}
    order = np.random.default_rng(seed).permutation(len(pixels))
    n_held = len(pixels) // 10 if len(pixels) >= 10 else int(len(pixels) > 1)
    if n_held:
        probe = fit([pixels[i] for i in order[n_held:]])
        mse = float(np.mean([squared_error(probe, pixels[i]) for i in order[:n_held]]))
        stats.update(heldout_images=n_held, heldout_psnr_db=psnr_from_mse(mse), heldout_exact=mse == 0)
    tok.fit_stats = stats
    return tok
