"""Reading images for the image modality: pixels at the modality's size and mode, and each file's class
from the folder layout (torchvision's ImageFolder: the first subfolder of the common folder is the class)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from arseq.modalities import DataError, Skipped
from arseq.modalities.image.files import class_root, load_digits, open_image
from arseq.tokenizers.patch import PatchTokenizer

SOURCES = ("digits",)

Item = tuple[str, "np.ndarray | None", "str | None", "str | None"]  # name, pixels, label, problem


def geometry(size: int, patch_size: int, mode: str) -> PatchTokenizer:
    """A tokenizer with a placeholder codebook: its pixels() does the resizing and conversion."""
    dim = patch_size * patch_size * (1 if mode == "L" else 3)
    return PatchTokenizer([[0] * dim], size=size, patch_size=patch_size, mode=mode)


def image_items(files: list[Path], source: str | None, labels: Sequence[str] | None, geo: PatchTokenizer, conditional: bool) -> Iterator[Item]:
    """(name, pixels, label, problem) per item; label None when unlabelled, pixels None on a problem.

    `labels` None means: take class names from the folder layout (fitting); otherwise a file's
    class is its nearest ancestor folder named in `labels`.
    """
    if source is not None:
        if source not in SOURCES:
            raise DataError(f"unknown image data.source {source!r}; known: {', '.join(SOURCES)}")
        pixels, targets = load_digits()
        for i, (p, y) in enumerate(zip(pixels, targets)):
            yield f"digits/{i:04d}", geo.pixels(Image.fromarray(p[..., 0], "L")), str(y) if conditional else None, None
        return
    root = class_root(files)
    for f in files:
        label, problem = None, None
        if conditional and labels is None and root is not None and Path(f).parent != root:
            label = Path(f).relative_to(root).parts[0]
        elif conditional and labels:
            label = next((p.name for p in Path(f).parents if p.name in labels), None)
            if label is None:
                problem = "not inside a class folder the tokenizer knows"
        if problem is None:
            try:
                yield str(f), geo.pixels(open_image(Path(f))), label, None
                continue
            except ValueError as e:
                problem = str(e)
        yield str(f), None, label, problem


def empty_class_folders(files: list[Path]) -> Iterator[Skipped]:
    """A Skipped per class folder (a subfolder of the files' common folder) that holds no image file."""
    root = class_root(files)
    seen = {p.name for f in files for p in Path(f).parents}
    for d in sorted(root.iterdir()) if root is not None and root.is_dir() else []:
        if d.is_dir() and not d.name.startswith(".") and d.name not in seen:
            yield Skipped(str(d), "empty class folder: no image files")
