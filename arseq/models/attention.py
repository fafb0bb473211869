"""The model's attention: PyTorch's fused scaled_dot_product_attention, except in the few-query passes of a
compiled pass on CPU (decode steps, speculative decoding's verify passes), where it is written out as
reductions. Why: there Inductor calls SDPA as an opaque kernel (~50-90 us per layer for one query on 2
cores, more than the layer's matmuls), while the written-out form, q.k summed over the head dim, a softmax,
and p.v summed over the slots, compiles into a few fused loops with the rest of the layer. On CUDA the
fused kernel inside a CUDA graph is already the fast path, so it is kept there.

`grouped_attention` serves eager CPU decode steps whose rows sit at very different positions: one call over
every row would read every row's keys up to the furthest row's position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Groups = tuple[tuple[int, int, int], ...]  # (first row, end row, slots read): rows a..b-1 read slots 0..n-1
FUSED_QUERIES = 16  # compiled CPU passes with at most this many queries per row use the written-out form


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout: float) -> Tensor:
    """softmax(q k^T / sqrt(d), masked) v for (B, H, T, D) queries over (B, H, S, D) keys and values; `mask`
    (B or 1, 1, T, S) is True where a query sees a slot."""
    fused = torch.compiler.is_compiling() and q.shape[-2] <= FUSED_QUERIES and q.device.type == "cpu" and dropout == 0.0
    if mask is None or not fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout)
    scores = (q.float().unsqueeze(-2) * k.float().unsqueeze(-3)).sum(-1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    p = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return (p.unsqueeze(-1) * v.float().unsqueeze(-3)).sum(-2).to(q.dtype)  # (B, H, T, D)


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, groups: Groups) -> Tensor:
    """`attention` over runs of rows (first, end, slots read): rows a..b-1 read keys and values 0..n-1 only.
    Slices of the cache are views, so a run costs its own reads and one kernel call. The slots a run skips
    are masked for its rows anyway: a row's output is the same up to rounding (as with the spans of a
    compiled pass, the kernel's sums run over more or fewer masked slots)."""
    return torch.cat([attention(q[a:b], k[a:b, :, :n], v[a:b, :, :n], mask[a:b, ..., :n], False, 0.0) for a, b, n in groups])
