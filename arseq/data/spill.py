"""Token ids of items read by `prepare`, kept on disk until the cache entry is written.

Why: a corpus of 100,000 MIDI files is ~100 M tokens; as Python lists (what items carried before) that is
~4 GB, as int64 arrays 800 MB, and all of it was held until the split was written. Here each item's ids
are appended to one file as they arrive from the readers, and the item keeps a view into its memory map
(pages the kernel can drop), so memory stays flat however large the corpus. Control tokens (conditions)
are added on access, not copied into every item.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

DTYPE = np.dtype(np.int32)


class SpilledTokens(Sequence[int]):
    """One item's ids: a slice of the spill file's memory map, with control ids after BOS (`with_prefix`)."""

    __slots__ = ("_ids", "_prefix")

    def __init__(self, ids: np.ndarray, prefix: Sequence[int] = ()):
        self._ids, self._prefix = ids, np.asarray(prefix, dtype=DTYPE)

    def with_prefix(self, prefix: Sequence[int]) -> SpilledTokens:
        return SpilledTokens(self._ids, prefix)

    def __len__(self) -> int:
        return len(self._ids) + len(self._prefix)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        ids = np.concatenate([self._ids[:1], self._prefix, self._ids[1:]]) if len(self._prefix) else np.array(self._ids)
        return ids if dtype is None else ids.astype(dtype, copy=False)

    def __getitem__(self, index: Any) -> Any:
        return np.asarray(self)[index]

    def __iter__(self) -> Iterator[int]:
        return iter(np.asarray(self).tolist())


class Spill:
    """An append-only file of int32 ids; `add` returns where an item's ids lie, `view` maps them back."""

    @classmethod
    def create(cls, root: Path) -> Spill:
        """A spill file in a new `.tmp-PID-*` folder of the cache (removed with the stale builds of
        killed runs, `cache_key.remove_stale_builds`)."""
        root.mkdir(parents=True, exist_ok=True)
        return cls(Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{os.getpid()}-")) / "tokens.bin")

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")
        self._size = 0
        self._map: np.ndarray | None = None

    def add(self, tokens: Any) -> tuple[int, int]:
        ids = np.asarray(tokens)
        if ids.size and (ids.min() < np.iinfo(DTYPE).min or ids.max() > np.iinfo(DTYPE).max):
            raise ValueError(f"token id {int(ids.max())} does not fit in int32")
        self._file.write(ids.astype(DTYPE, copy=False).tobytes())
        start, self._size = self._size, self._size + len(ids)
        return start, self._size

    def view(self, start: int, stop: int) -> SpilledTokens:
        """Item ids written by `add` (after `close`)."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=DTYPE, mode="r") if self._size else np.zeros(0, DTYPE)
        return SpilledTokens(self._map[start:stop])

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def remove(self) -> None:
        """Delete the file and its folder; memory maps already made stay readable (POSIX keeps the pages)."""
        self.close()
        shutil.rmtree(self.path.parent, ignore_errors=True)
