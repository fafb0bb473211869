"""The `data:` section of a config: what to read, how to split it, and how training windows are made."""

from __future__ import annotations

from dataclasses import dataclass

from arseq.modalities.base import DataError


@dataclass
class DataConfig:
    """The `data:` section of a config.

    Args:
        paths: training data: a file, folder, glob, or a list of them.
        val_paths: validation data; when absent, `val_fraction` of the items are held out.
        source: a dataset the modality ships or knows (e.g. `bach_chorales`, `digits`).
        val_fraction: share of items held out, chosen with `seed`. With too few items to split,
            the last `val_fraction` of the token stream is held out instead (one text file).
        seed: seed of the split.
        block_size: context length of training windows (the model's max sequence length).
        batch_size: windows per batch.
        num_workers: DataLoader worker processes.
        conditions: condition fields to train with (control tokens after BOS); None: every field of the
            modality that the data has values for; []: none.
        condition_drop: chance that training hides an item's condition (so the model also samples without one).
        workers: processes reading and tokenizing files (None: the usable cores; 1: in this process). The
            result is the same for any number (same cache entry, same bytes).
        file_seconds: a file still being read after this many seconds is skipped with its reason (None:
            ARSEQ_FILE_SECONDS, else 120); with workers, even a file that hangs in C code.
        fim_rate: share of training windows reordered for fill-in-the-middle (arseq.data.fim); 0 (default):
            none, and no sentinel tokens (the model is exactly what it was without FIM).
        fim_ordering: psm, spm or both (half each): where the suffix goes (arseq.data.fim).
    """

    paths: str | list[str] | None = None
    val_paths: str | list[str] | None = None
    source: str | None = None
    val_fraction: float = 0.1
    seed: int = 1337
    block_size: int = 256
    batch_size: int = 32
    num_workers: int = 0
    conditions: list[str] | None = None
    condition_drop: float = 0.1
    workers: int | None = None
    file_seconds: float | None = None
    fim_rate: float = 0.0
    fim_ordering: str = "psm"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise DataError(f"data.workers must be >= 1 (or null: the usable cores), got {self.workers}")
        if self.file_seconds is not None and not self.file_seconds > 0:
            raise DataError(f"data.file_seconds must be > 0, got {self.file_seconds}")
        if not 0 <= self.condition_drop <= 1:
            raise DataError(f"data.condition_drop must be in [0, 1], got {self.condition_drop}")
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.block_size < 2 or self.batch_size < 1:
            raise DataError("data.block_size must be >= 2 and data.batch_size >= 1")
