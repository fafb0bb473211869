"""Log-likelihood of whole sequences, however long: the shared measure behind validation, `evaluate`
and sample ranking. Every token after a sequence's first is predicted exactly once. A sequence longer
than the context is scored in windows of context + 1 tokens that advance by `stride`: each window
scores only the tokens the previous one did not, so with stride < context every token past the first
window still sees at least context - stride tokens before it (stride = context: chunks that restart
the context, cheapest)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from arseq.models.transformer import Transformer

TokenSeqs = Sequence[Sequence[int] | np.ndarray]  # lists of ids, or the data splits' memory-mapped items

Chunk = tuple[int, int, np.ndarray]  # (sequence index, first target offset within the chunk, tokens)


def chunk_sequences(
    seqs: TokenSeqs,
    context: int,
    start: Sequence[int] | None = None,
    stride: int | None = None,
    head: int = 0,
) -> list[Chunk]:
    """Cut sequences into scoring windows; tokens before `start[i]` (e.g. a prompt) are context only. With
    `head`, every window after a sequence's first starts with the sequence's first `head` tokens (a
    conditioned item's BOS and control tokens, as training and sampling keep them)."""
    stride = context if stride is None else stride
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..{context}, got {stride}")
    if not 0 <= head < context:
        raise ValueError(f"head must be in 0..{context - 1}, got {head}")
    chunks: list[Chunk] = []
    for i, given in enumerate(seqs):
        s = np.asarray(given, dtype=np.int64)
        first = max(1, start[i] if start is not None else 1)
        scored_to = 0  # targets s[1 : scored_to + 1] are taken care of
        c0 = 0
        while scored_to < len(s) - 1:
            h = head if c0 > 0 else 0
            body = s[c0 : c0 + context + 1 - h]
            piece = np.concatenate([s[:h], body]) if h else body
            lo = max(scored_to + 1, first) - c0 + h  # first target offset within this window
            if lo < len(piece):
                chunks.append((i, lo, piece))
            scored_to = c0 + len(body) - 1
            c0 = max(c0 + 1, scored_to - (context - stride))  # the next window's first token is context only
    return chunks


def collate_chunks(batch: Sequence[Chunk], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded inputs (B, W-1), targets with -100 where not scored, and sequence indices (B,)."""
    width = max(len(c[2]) for c in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), width - 1), -100, dtype=torch.long)
    for r, (_, first, piece) in enumerate(batch):
        ids[r, : len(piece)] = torch.from_numpy(piece)
        targets[r, first - 1 : len(piece) - 1] = torch.from_numpy(piece[first:])
    return ids[:, :-1], targets, torch.tensor([c[0] for c in batch])


@torch.inference_mode()
def sequence_nll(
    model: Transformer,
    seqs: TokenSeqs,
    *,
    start: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_id: int = 0,
    stride: int | None = None,
    progress: bool = False,
    head: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: summed NLL (nats) of its scored tokens, and how many were scored (`head`: see chunk_sequences)."""
    chunks = chunk_sequences(seqs, model.cfg.max_seq_len, start, stride, head)
    chunks.sort(key=lambda c: len(c[2]))
    nll = np.zeros(len(seqs), dtype=np.float64)
    count = np.zeros(len(seqs), dtype=np.int64)
    device = model.embed.weight.device
    was_training = model.training
    model.eval()
    batches = range(0, len(chunks), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch", leave=False, disable=None)
    try:
        for b0 in batches:
            ids, targets, index = collate_chunks(chunks[b0 : b0 + batch_size], pad_id)
            logits = model(ids.to(device)).float()
            loss = F.cross_entropy(logits.transpose(1, 2), targets.to(device), ignore_index=-100, reduction="none")
            np.add.at(nll, index.numpy(), loss.sum(dim=1).double().cpu().numpy())
            np.add.at(count, index.numpy(), (targets != -100).sum(dim=1).numpy())
    finally:
        model.train(was_training)
    return nll, count


def unigram_baseline(train: TokenSeqs, val: TokenSeqs, vocab_size: int, never_predicted: Sequence[int] = ()) -> tuple[float, int]:
    """Mean NLL (nats) of an add-one unigram model fitted on `train`, on exactly the tokens the model predicts
    in `val` (every token after the first); ids in `never_predicted` (pad, BOS) get no probability mass."""
    support = np.ones(vocab_size, dtype=bool)
    support[list(never_predicted)] = False
    counts = np.zeros(vocab_size, dtype=np.float64)
    for item in train:
        counts += np.bincount(np.asarray(item[1:], dtype=np.int64), minlength=vocab_size)
    probs = np.where(support, counts + 1.0, 0.0)
    probs /= probs.sum()
    targets = np.concatenate([np.asarray(v[1:], dtype=np.int64) for v in val] or [np.zeros(0, dtype=np.int64)])
    with np.errstate(divide="ignore"):
        return float(-np.log(probs[targets]).mean()) if len(targets) else float("nan"), int(len(targets))
