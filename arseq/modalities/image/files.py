"""Reading images: scikit-learn's bundled digits, image files decoded in full with one-line reasons for
those that cannot be, and the class folders of an ImageFolder layout."""

from __future__ import annotations

import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image


def load_digits() -> tuple[list[np.ndarray], list[int]]:
    """scikit-learn's 8×8 digits as (8, 8, 1) uint8 arrays with 17 levels spread over 0..255, and labels."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    pixels = np.rint(d.images * (255 / 16)).astype(np.uint8)[..., None]
    return list(pixels), d.target.tolist()


def open_image(path: Path) -> Image.Image:
    """Fully decode an image file (first frame); raises ValueError with a one-line reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                im.seek(0)
                im.load()
                return im.copy()
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except Image.UnidentifiedImageError:
        raise ValueError("not an image pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError("too many pixels (pillow's decompression-bomb limit)") from None
    except (OSError, SyntaxError, EOFError, struct.error) as e:
        raise ValueError(f"truncated or corrupt image ({e})") from None


def class_root(files: Sequence[Path]) -> Path | None:
    """The folder whose subfolders name the classes: the deepest folder holding every file."""
    if not files:
        return None
    return Path(os.path.commonpath([str(Path(f).parent) for f in files]))


def natural_order(name: str) -> list[Any]:
    """Sort key putting class "9" before "10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]
