"""Reading images for the image modality: pixels at the modality's size and mode, and each file's class
from the folder layout (torchvision's ImageFolder: the first subfolder of the common folder is the class).
`read` opens, resizes and encodes each file in a worker process (`encoded_files`): all three are per file,
and about half of an image's time is opening and resizing, half the nearest-codebook search."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from arseq.modalities import DataError, Skipped
from arseq.modalities.image.files import class_root, load_digits, open_image
from arseq.parallel import Failed, file_budget, ordered_map
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
    for name, label, problem in labelled_files(files, labels, conditional):
        if problem is None:
            try:
                yield name, geo.pixels(open_image(Path(name))), label, None
                continue
            except ValueError as e:
                problem = str(e)
        yield name, None, label, problem


def labelled_files(files: list[Path], labels: Sequence[str] | None, conditional: bool) -> list[tuple[str, str | None, str | None]]:
    """(file, label, problem) per file, from the paths alone (nothing is opened): see `image_items`."""
    root = class_root(files)
    out: list[tuple[str, str | None, str | None]] = []
    for f in files:
        label, problem = None, None
        if conditional and labels is None and root is not None and Path(f).parent != root:
            label = Path(f).relative_to(root).parts[0]
        elif conditional and labels:
            label = next((p.name for p in Path(f).parents if p.name in labels), None)
            if label is None:
                problem = "not inside a class folder the tokenizer knows"
        out.append((str(f), label, problem))
    return out


def encoded_files(
    files: list[Path], labels: Sequence[str] | None, geo: PatchTokenizer, conditional: bool, encode: Callable[[np.ndarray, str | None], Any]
) -> Iterator[tuple[str, Any, str | None, str | None]]:
    """(file, encode(pixels, label), label, problem) per file, in file order: each file opened, resized and
    encoded in a worker process (`data.workers`, `arseq.parallel`); a file that crashes or hangs its worker
    has the reason as its problem. `encode` must be picklable where workers are spawned."""
    jobs = labelled_files(files, labels, conditional)
    work = partial(_open_and_encode, geo, encode)
    workers = 1 if len(jobs) < 4 else None  # forking costs more than a few images
    for (name, label, _), result in zip(jobs, ordered_map(work, jobs, workers, seconds=file_budget())):
        yield (name, None, label, result.reason) if isinstance(result, Failed) else (name, result[0], label, result[1])


def _open_and_encode(
    geo: PatchTokenizer, encode: Callable[[np.ndarray, str | None], Any], job: tuple[str, str | None, str | None]
) -> tuple[Any, str | None]:
    name, label, problem = job
    if problem is not None:
        return None, problem
    try:
        pixels = geo.pixels(open_image(Path(name)))
    except ValueError as e:
        return None, str(e)
    return encode(pixels, label), None


def empty_class_folders(files: list[Path]) -> Iterator[Skipped]:
    """A Skipped per class folder (a subfolder of the files' common folder) that holds no image file."""
    root = class_root(files)
    seen = {p.name for f in files for p in Path(f).parents}
    for d in sorted(root.iterdir()) if root is not None and root.is_dir() else []:
        if d.is_dir() and not d.name.startswith(".") and d.name not in seen:
            yield Skipped(str(d), "empty class folder: no image files")
