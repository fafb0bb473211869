"""Images for people to look at: a grid of generated images, and an image as text for a terminal."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image


def _upscale(image: Image.Image, scale: int) -> Image.Image:
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST) if scale > 1 else image


def tile(images: Sequence[Image.Image], cols: int, scale: int, gap: int = 2) -> Image.Image:
    """Images (all the same size and mode) on a gray grid, each upscaled `scale` times (nearest)."""
    cells = [_upscale(im.convert("RGB"), scale) for im in images]
    w, h = cells[0].size
    rows = math.ceil(len(cells) / cols)
    grid = Image.new("RGB", (cols * (w + gap) + gap, rows * (h + gap) + gap), (128, 128, 128))
    for i, cell in enumerate(cells):
        grid.paste(cell, (gap + (i % cols) * (w + gap), gap + (i // cols) * (h + gap)))
    return grid


def ascii_art(pixels: np.ndarray) -> str:
    ramp = " .:-=+*#%@"
    luma = pixels.astype(np.float64).mean(axis=2)
    return "\n".join("".join(ramp[min(int(v / 256 * len(ramp)), len(ramp) - 1)] * 2 for v in row) for row in luma)
