"""From a model's logits to tokens, for rows that each have their own settings: one `process_logits` for plain
and speculative decoding alike (constraint, repetition penalty, temperature, top-k, top-p, min-p, in that
order), classifier-free guidance, and the draw. Settings are tensors (`Params`, one entry per row); a filter
a row does not use is the identity for that row (top-k of the whole vocabulary, top-p of 1, min-p of 0), so
a row's result never depends on its neighbours' settings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from arseq.decode import rng
from arseq.decode.config import SamplingConfig


@dataclass
class Params:
    """Per-row sampling settings (N,) on the device; the host keeps which filters any row uses."""

    temperature: Tensor
    top_k: Tensor  # the vocabulary size where unused
    top_p: Tensor  # 1 where unused
    min_p: Tensor  # 0 where unused
    penalty: Tensor  # 1 where unused
    filters: bool  # any row uses top-k, top-p or min-p
    sampled: bool  # any row draws (temperature > 0)

    @staticmethod
    def of(cfgs: list[SamplingConfig], vocab: int, device: torch.device) -> Params:
        def col(values: list[float] | list[int], dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return Params(
            col([c.temperature for c in cfgs]),
            col([min(c.top_k or vocab, vocab) for c in cfgs], torch.long),
            col([c.top_p if c.top_p is not None else 1.0 for c in cfgs]),
            col([c.min_p or 0.0 for c in cfgs]),
            col([c.repetition_penalty for c in cfgs]),
            any(c.top_k is not None or c.top_p is not None or c.min_p for c in cfgs),
            any(c.temperature > 0 for c in cfgs),
        )

    def repeat(self, n: int) -> Params:
        """Each row's settings n times in a row (row-major): for the n positions of a verify pass."""

        def rep(t: Tensor) -> Tensor:
            return t.repeat_interleave(n)

        return Params(rep(self.temperature), rep(self.top_k), rep(self.top_p), rep(self.min_p), rep(self.penalty), self.filters, self.sampled)


def process_logits(logits: Tensor, p: Params, seen: Tensor | None, allowed: Tensor | None) -> Tensor:
    """(N, V) float logits after the constraint (`allowed`), the repetition penalty (CTRL's, as in Hugging
    Face, on the tokens `seen`), the temperature (greedy rows keep their scale) and the top-k/top-p/min-p filters."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if seen is not None:
        r = p.penalty[:, None]
        logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
    logits = logits / torch.where(p.temperature > 0, p.temperature, 1.0)[:, None]
    if not p.filters:
        return logits
    ordered, order = torch.sort(logits, descending=True, dim=-1)
    kth = ordered.gather(1, (p.top_k - 1)[:, None])
    ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    probs = ordered.softmax(-1)
    drop = (probs.cumsum(-1) - probs > p.top_p[:, None]) & (p.top_p < 1)[:, None]  # keep the smallest head with mass >= top_p
    drop |= ordered == float("-inf")
    logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p.min_p[:, None] * probs.max(-1, keepdim=True).values, float("-inf"))


def guided(cond: Tensor, uncond: Tensor, scale: Tensor | float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022; for language models Sanchez et al. 2023): the
    unconditional log-probabilities moved `scale` (one, or one per row) times the way the condition moves them."""
    base = uncond.float().log_softmax(-1)
    scale = scale[:, None] if isinstance(scale, Tensor) else scale
    return base + scale * (cond.float().log_softmax(-1) - base)


def draw(probs: Tensor, keys: list[int]) -> Tensor:
    """One token per row from `probs` (N, V): the exponential race argmax(p / E), E ~ Exp(1) from the row's
    own counter-based stream (`keys`: arseq.decode.rng), which picks token i with probability p_i."""
    u = rng.uniform(keys, probs.shape[-1], probs.device)
    return (probs / -torch.log(u)).argmax(-1)


def choose(logits: Tensor, p: Params, keys: list[int] | None) -> Tensor:
    """Processed logits (N, V) -> tokens (N,): the argmax for greedy rows, a draw for the others (`keys`:
    None when every row is greedy)."""
    greedy = logits.argmax(-1)
    if keys is None:
        return greedy
    return torch.where(p.temperature > 0, draw(logits.softmax(-1), keys), greedy)


def not_finite(logits: Tensor) -> Tensor:
    """(N,) rows whose logits hold a NaN or +inf, or allow nothing at all (max propagates NaN)."""
    return ~torch.isfinite(logits.max(-1).values)
