"""Batches for training (random windows over a memory-mapped stream) and validation (fixed chunks)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from arseq.conditioning import Controls
from arseq.data.fim import FimWindows
from arseq.data.prepare import TokenSplit
from arseq.errors import DataError
from arseq.models.scoring import Chunk, chunk_sequences, collate_chunks

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class RandomWindows(IterableDataset):
    """Endless batches of `block_size + 1`-token windows drawn uniformly from the training stream.

    The stream stays on disk (memmap), so memory does not grow with the corpus. Each DDP rank and
    loader worker draws from its own seeded generator. With conditions (`controls.head` > 0) a window
    that starts inside an item longer than a window starts with the item's head (BOS and control tokens)
    instead, then goes on from where it was drawn; the token right after the head is not a target there
    (after a head comes the item's start, not an arbitrary point of it). With `fim` (data.fim_rate), a share
    of the windows is reordered for fill-in-the-middle after augmenting (arseq.data.fim).
    """

    def __init__(
        self,
        token_file: Path,
        block_size: int,
        batch_size: int,
        seed: int,
        augment: Augment | None = None,
        controls: Controls | None = None,
        fim: FimWindows | None = None,
    ):
        self.token_file, self.block_size, self.batch_size = Path(token_file), block_size, batch_size
        self.seed, self.augment, self.fim = seed, augment, fim
        self.unknown = controls.unknown_table() if controls is not None and controls.drop > 0 else None
        self.drop = controls.drop if controls is not None else 0.0
        n = len(np.load(self.token_file, mmap_mode="r"))
        if n < block_size + 1:
            raise DataError(f"training data has {n} tokens, fewer than data.block_size + 1 = {block_size + 1}")
        self.head = controls.head if controls is not None else 0
        if self.head:
            self.offsets = np.load(self.token_file.with_name(self.token_file.stem + "_offsets.npy"))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tokens = np.load(self.token_file, mmap_mode="r")
        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, _rank(), worker.id if worker else 0])
        span = np.arange(self.block_size + 1)
        while True:
            starts = rng.integers(0, len(tokens) - self.block_size, size=self.batch_size)
            index = starts[:, None] + span
            headed = np.zeros(self.batch_size, dtype=bool)
            if self.head:
                index, headed = self._headed(starts, span)
            windows = tokens[index].astype(np.int64)
            if self.unknown is not None:  # hide conditions: each control token becomes its field's unknown token
                hidden = self.unknown[windows]
                windows = np.where((hidden != windows) & (rng.random(windows.shape) < self.drop), hidden, windows)
            if self.augment is not None:
                windows = np.stack([self.augment(w, rng) for w in windows])
            if self.fim is not None:
                windows = self.fim(windows, index, rng)
            windows = torch.from_numpy(windows)
            targets = windows[:, 1:].clone()
            targets[torch.from_numpy(headed), self.head - 1] = -100
            yield windows[:, :-1], targets

    def _headed(self, starts: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token indices of each window (its item's head first where it starts inside the item), and which have one."""
        item = np.searchsorted(self.offsets, starts, side="right") - 1
        first = self.offsets[item]  # each window's item start
        longer = self.offsets[item + 1] - first > len(span)  # items that fit a window are seen whole from their head
        starts = np.where(longer & (starts - first <= self.head), first, starts)  # inside or right after the head: its start
        headed = longer & (starts > first)
        h = self.head
        inside = np.concatenate([first[:, None] + span[:h], starts[:, None] + span[: len(span) - h]], axis=1)
        return np.where(headed[:, None], inside, starts[:, None] + span), headed


class EvalChunks(Dataset):
    """Validation items cut into scoring chunks: every token after an item's first is predicted once."""

    def __init__(self, split: TokenSplit, block_size: int, head: int = 0):
        self.chunks: list[Chunk] = chunk_sequences(split.items(), block_size, head=head)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Chunk:
        return self.chunks[i]


def train_loader(
    split_file: Path,
    block_size: int,
    batch_size: int,
    seed: int,
    augment: Augment | None,
    num_workers: int,
    controls: Controls | None = None,
    fim: FimWindows | None = None,
) -> DataLoader:
    dataset = RandomWindows(split_file, block_size, batch_size, seed, augment, controls, fim)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)


def val_loader(split: TokenSplit, block_size: int, batch_size: int, pad_id: int, head: int = 0) -> DataLoader | None:
    if len(split) == 0:
        return None
    return DataLoader(EvalChunks(split, block_size, head), batch_size=batch_size, shuffle=False, collate_fn=partial(collate_chunks, pad_id=pad_id))
