"""A modality's `read`, one file at a time in worker processes (arseq.parallel), for modalities whose items depend
on their own file only (`Modality.reads_files_independently`)."""

from __future__ import annotations

from functools import partial
from typing import Any, Iterator

from arseq.modalities.base import Skipped
from arseq.parallel import Failed, file_budget, ordered_map


def read_per_file(modality: Any, files: list[Any], tokenizer: Any, check: bool) -> Iterator[Any]:
    """`modality.read` on one file at a time in worker processes, records in file order, for modalities
    whose items depend on their own file only (`reads_files_independently`); a file that crashes or hangs
    its worker becomes `Skipped` with the reason."""
    read_one = partial(_read_one, modality, tokenizer, check)  # picklable where workers are spawned
    workers = 1 if len(files) < 4 else None
    for path, records in zip(files, ordered_map(read_one, files, workers, seconds=file_budget())):
        if isinstance(records, Failed):
            yield Skipped(str(path), records.reason)
        else:
            yield from records


def _read_one(modality: Any, tokenizer: Any, check: bool, path: Any) -> list[Any]:
    return list(modality.read([path], None, tokenizer, check_roundtrip=check))
