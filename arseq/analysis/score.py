"""Per-token log-probabilities and ranks with the same windows as `sequence_nll` (each token once, long items
strided), and the per-item table of `arseq score` (rank FASTA variants or MIDI files by likelihood)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from arseq.models.scoring import TokenSeqs, chunk_sequences, collate_chunks
from arseq.models.transformer import Transformer


@torch.inference_mode()
def token_scores(
    model: Transformer, seqs: TokenSeqs, *, batch_size: int = 32, pad_id: int = 0, stride: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sequence: log-probability (nats) of every token after the first, and its rank among the model's
    predictions (1 = the likeliest), in order."""
    chunks = chunk_sequences(seqs, model.cfg.max_seq_len, None, stride)  # in sequence order, windows in order
    order = sorted(range(len(chunks)), key=lambda c: len(chunks[c][2]))
    per_chunk: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    device = model.embed.weight.device
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(order), batch_size):
            picked = order[b0 : b0 + batch_size]
            ids, targets, _ = collate_chunks([chunks[c] for c in picked], pad_id)
            logp = F.log_softmax(model(ids.to(device)).float(), dim=-1)
            targets = targets.to(device)
            safe = targets.clamp(min=0)
            lp = logp.gather(-1, safe[..., None]).squeeze(-1)
            rank = (logp > lp[..., None]).sum(-1) + 1
            keep = (targets != -100).cpu().numpy()
            lps, ranks = lp.double().cpu().numpy(), rank.cpu().numpy()
            for r, c in enumerate(picked):
                per_chunk[c] = (lps[r][keep[r]], ranks[r][keep[r]])
    finally:
        model.train(was_training)
    out: list[tuple[list[np.ndarray], list[np.ndarray]]] = [([], []) for _ in seqs]
    for c, (i, _, _) in enumerate(chunks):
        out[i][0].append(per_chunk[c][0])
        out[i][1].append(per_chunk[c][1])
    return [(np.concatenate(a) if a else np.zeros(0), np.concatenate(b).astype(np.int64) if b else np.zeros(0, np.int64)) for a, b in out]


def item_row(name: str, nll: float, count: int) -> dict[str, Any]:
    """One line of the score table: summed and mean NLL (nats), perplexity and scored token count."""
    mean = nll / count if count else math.nan
    return {
        "name": name,
        "tokens": int(count),
        "nll_sum": float(nll),
        "nll_mean": mean,
        "perplexity": math.exp(mean) if count else math.nan,
        "bits_per_token": mean / math.log(2) if count else math.nan,
    }


def token_label(tokenizer: Any, token: int) -> str:
    """A readable name of one token: the tokenizer's `token_name`, else its decoded text; '' if neither."""
    if hasattr(tokenizer, "token_name"):
        return str(tokenizer.token_name(int(token)))
    try:
        text = tokenizer.decode([int(token)])
    except Exception:  # noqa: BLE001 - some tokenizers decode only whole items (images)
        return ""
    return text if isinstance(text, str) else ""
