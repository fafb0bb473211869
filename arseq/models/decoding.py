"""Static-shape cached passes (the gpt-fast / torchtune pattern): cache slots are a tensor (`input_pos`),
the KV cache hands back its whole buffer and each pass's mask is rows of one causal mask built per
`generate` call, so every decode step has the same shapes: it can be compiled once and replayed
(torch.compile, CUDA graphs). Left-padded rows get per-row rotary positions and hide their padding.
"""
from __future__ import annotations

import torch
from torch import Tensor

from arseq.models.transformer import Transformer


def causal_mask(cache_len: int, device: torch.device) -> Tensor:
    """(cache_len, cache_len): slot q sees slots 0..q. Built once per generate call, sliced per pass."""
    return torch.ones(cache_len, cache_len, dtype=torch.bool, device=device).tril()


def slot_mask(causal: Tensor, pad: Tensor | None, input_pos: Tensor) -> Tensor:
    """(B or 1, 1, T, cache_len): the slots queries at `input_pos` (T,) see, minus each row's `pad` left padding."""
    rows = causal.index_select(0, input_pos)  # (T, cache_len)
    if pad is None:
        return rows[None, None]
    slots = torch.arange(causal.shape[1], device=causal.device)
    mask = rows[None] & (slots[None, None, :] >= pad[:, None, None])
    mask |= slots[None, :] == input_pos[:, None]  # pad queries see themselves: no empty softmax rows
    return mask.unsqueeze(1)


def row_positions(input_pos: Tensor, pad: Tensor | None) -> Tensor | None:
    """Rotary positions (B, T) of left-padded rows: a row's first real token is at position 0."""
    return None if pad is None else (input_pos[None, :] - pad[:, None]).clamp(min=0)


def prefill(model: Transformer, tokens: Tensor, pad: Tensor | None, causal: Tensor) -> Tensor:
    """Run prompts (B, T), left-padded by `pad` (None: no row is), into cache slots 0..T-1; return last logits (B, V)."""
    input_pos = torch.arange(tokens.shape[1], device=tokens.device)
    mask = slot_mask(causal, pad, input_pos)
    return model(tokens, input_pos=input_pos, positions=row_positions(input_pos, pad), mask=mask, last_only=True)[:, -1]


def decode_step(model: Transformer, token: Tensor, input_pos: Tensor, pad: Tensor | None, causal: Tensor) -> Tensor:
    """Feed one token per row (B,) at cache slot `input_pos` (1,); return next-token logits (B, V).

    Shapes depend only on the batch and the cache length, never on the slot: the function torch.compile sees.
    """
    mask = slot_mask(causal, pad, input_pos)
    return model(token[:, None], input_pos=input_pos, positions=row_positions(input_pos, pad), mask=mask)[:, -1]
