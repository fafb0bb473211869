"""Pictures of generated data for people to look at: the piano roll of a piece, a grid of images,
images as text for a terminal."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from arseq.tokenizers.score import VOICE_NAMES, Events

PART_COLOURS = ((220, 50, 47), (38, 139, 210), (133, 153, 0), (108, 113, 196), (203, 75, 22),
                (42, 161, 152), (211, 54, 130), (181, 137, 0))



def piano_roll(ev: Events, ppq: int, px_per_quarter: int = 24, row: int = 5) -> Any:
    """A piano-roll image: one colour per part, bar lines, C of each octave labelled on the pitch axis."""
    end = ev.bars[-1].start + ev.bars[-1].length if ev.bars else ppq * 4
    pitches = [n.pitch for n in ev.notes] or [60]
    lo, hi = max(0, min(pitches) - 3), min(127, max(pitches) + 3)
    scale = px_per_quarter / ppq
    if end * scale > 4000:
        scale = 4000 / end
    left, top = 36, 18
    width, height = left + int(end * scale) + 8, top + (hi - lo + 1) * row + 8
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    y = lambda p: top + (hi - p) * row  # noqa: E731
    for p in range(lo, hi + 1):
        if p % 12 in (1, 3, 6, 8, 10):
            d.rectangle([left, y(p), width - 8, y(p) + row - 1], fill=(243, 243, 243))
        if p % 12 == 0:
            d.line([left, y(p) + row - 1, width - 8, y(p) + row - 1], fill=(200, 200, 200))
            d.text((2, y(p) - 4), f"C{p // 12 - 1}", fill="black")
    for i, bar in enumerate(ev.bars):
        x = left + int(bar.start * scale)
        d.line([x, top, x, height - 8], fill=(150, 150, 150))
        if i % 4 == 0:
            d.text((x + 2, 2), str(i + 1), fill=(90, 90, 90))
    d.line([left + int(end * scale), top, left + int(end * scale), height - 8], fill=(150, 150, 150))
    names = list(VOICE_NAMES) if ev.num_parts == 4 else [f"Part {i + 1}" for i in range(ev.num_parts)]
    x = width - 8
    for part in sorted({n.part for n in ev.notes}, reverse=True):  # legend, right-aligned above the roll
        x -= 14 + 6 * len(names[part])
        d.rectangle([x, 5, x + 6, 11], fill=PART_COLOURS[part % len(PART_COLOURS)])
        d.text((x + 8, 2), names[part], fill="black")
    for n in ev.notes:
        x0, x1 = left + int(n.onset * scale), left + max(int(n.onset * scale) + 1, int((n.onset + n.dur) * scale) - 1)
        d.rectangle([x0, y(n.pitch), x1, y(n.pitch) + row - 1], fill=PART_COLOURS[n.part % len(PART_COLOURS)])
    return img


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
