"""Log-likelihood of whole sequences, however long: the shared measure behind `evaluate` and sample ranking."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from arseq.models.transformer import Transformer


@torch.inference_mode()
def sequence_nll(
    model: Transformer,
    seqs: Sequence[Sequence[int]],
    *,
    start: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_id: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: summed NLL (nats) of its tokens from index max(start, 1) on, and how many that is.

    Every token after the first is predicted exactly once. A sequence longer than the context is cut
    into chunks of context + 1 tokens overlapping by one, so context restarts every `max_seq_len` tokens.
    """
    ctx = model.cfg.max_seq_len
    chunks: list[tuple[int, int, np.ndarray]] = []  # (sequence index, first counted offset, tokens)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        first = max(1, start[i] if start is not None else 1)
        for c0 in range(0, max(len(s) - 1, 0), ctx):
            piece = s[c0 : c0 + ctx + 1]
            if c0 + len(piece) - 1 >= first:
                chunks.append((i, max(first - c0, 1), piece))
    chunks.sort(key=lambda c: len(c[2]))
    nll = np.zeros(len(seqs), dtype=np.float64)
    count = np.zeros(len(seqs), dtype=np.int64)
    device = model.embed.weight.device
    was_training = model.training
    model.eval()
    batches = range(0, len(chunks), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch", leave=False)
    try:
        for b0 in batches:
            batch = chunks[b0 : b0 + batch_size]
            width = max(len(c[2]) for c in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            targets = torch.full((len(batch), width - 1), -100, dtype=torch.long)
            for r, (_, first, piece) in enumerate(batch):
                ids[r, : len(piece)] = torch.from_numpy(piece)
                targets[r, first - 1 : len(piece) - 1] = torch.from_numpy(piece[first:])
            ids, targets = ids.to(device), targets.to(device)
            logits = model(ids[:, :-1]).float()
            loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
            row_nll, row_n = loss.sum(dim=1).cpu().numpy(), (targets != -100).sum(dim=1).cpu().numpy()
            for r, (i, _, _) in enumerate(batch):
                nll[i] += row_nll[r]
                count[i] += row_n[r]
    finally:
        model.train(was_training)
    return nll, count
