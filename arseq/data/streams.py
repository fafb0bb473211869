"""Token streams: items read and tokenized in `data.workers` processes and spilled to disk as they come
(`arseq.data.spill`), then written back to back as one `.npy` array per split with its offsets."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from arseq.data.cache_key import cache_root
from arseq.data.config import DataConfig
from arseq.data.reading import read_per_file
from arseq.data.spill import Spill
from arseq.modalities.base import DataError, Example, Modality, Skipped
from arseq.parallel import configured
from arseq.tokenizers.base import Tokenizer


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def collect(
    modality: Modality, files: list[Path], source: str | None, tokenizer: Tokenizer, check: bool, desc: str, progress: bool, data: DataConfig
) -> tuple[list[Example], list[Skipped]]:
    """Read and tokenize in `data.workers` processes; items' ids are spilled to disk as they come, so
    memory stays flat (`arseq.data.spill`)."""
    spill = Spill.create(cache_root())
    try:
        return _collect_into(spill, modality, files, source, tokenizer, check, desc, progress, data)
    finally:
        spill.remove()  # the items' memory maps keep their pages readable


def _collect_into(
    spill: Spill,
    modality: Modality,
    files: list[Path],
    source: str | None,
    tokenizer: Tokenizer,
    check: bool,
    desc: str,
    progress: bool,
    data: DataConfig,
) -> tuple[list[Example], list[Skipped]]:
    from tqdm import tqdm

    examples: list[tuple[Example, int, int]] = []
    skipped: list[Skipped] = []
    with configured(data.workers, data.file_seconds):
        if source is None and getattr(modality, "reads_files_independently", False):
            stream = read_per_file(modality, files, tokenizer, check)
        else:
            stream = modality.read(files, source, tokenizer, check_roundtrip=check)
        unit = " files" if source is None else " items"
        for record in tqdm(stream, desc=desc, unit=unit, disable=None if progress else True, leave=False):
            if isinstance(record, Skipped):
                skipped.append(record)
            elif len(record.tokens) > 0:
                start, stop = spill.add(record.tokens)
                record.tokens = ()
                examples.append((record, start, stop))
            else:
                skipped.append(Skipped(record.name, "no tokens"))
    spill.close()
    for e, start, stop in examples:
        e.tokens = spill.view(start, stop)
    return [e for e, _, _ in examples], skipped


def write_split(directory: Path, name: str, seqs: list[Any], dtype: np.dtype, vocab_size: int) -> None:
    """Write items (arrays, or ids spilled to disk) back to back, one at a time (never all in memory)."""
    for s in map(np.asarray, seqs):
        if len(s) and (s.min() < 0 or s.max() >= vocab_size):
            bad = int(s.max() if s.max() >= vocab_size else s.min())
            raise DataError(f"the modality produced token id {bad}, outside the tokenizer's vocabulary of {vocab_size}")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Written, not memory-mapped: a full disk is then ENOSPC (one line), where writing through a map died by
    # SIGBUS; the space is reserved first, so a disk too small fails before a byte of the tokens is written.
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (int(offsets[-1]),)}
    with open(directory / f"{name}.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        _reserve(f, f.tell() + int(offsets[-1]) * dtype.itemsize)
        for s in seqs:
            f.write(np.asarray(s, dtype=dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    np.save(directory / f"{name}_offsets.npy", offsets)


def _reserve(f: Any, size: int) -> None:
    """Allocate `size` bytes for the file now (ENOSPC here, not midway); a no-op where unsupported."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except AttributeError:
        return
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
