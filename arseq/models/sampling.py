"""Sampling with a static KV cache: prefill the prompts in one pass, then decode one token per step.

Usable without Lightning. Prompts of different lengths are left-padded; per-row positions and a padding
mask keep every row exactly as if it were sampled alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from arseq.models.transformer import Transformer

# Given each row's tokens so far, return a bool (rows, vocab) tensor of the tokens allowed next.
Constraint = Callable[[list[list[int]]], Tensor]
# Called after every step with the step index, the tokens just chosen (B,) and which rows are done (B,).
OnToken = Callable[[int, Tensor, Tensor], None]


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_tokens: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k is None or self.top_k >= 1, "top_k must be >= 1"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.min_p is None or 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class Generation:
    tokens: list[list[int]]  # per row: the continuation, stop token excluded
    stopped: list[bool]  # per row: ended on a stop token


def _attention_mask(pad: Tensor, q_len: int, k_len: int) -> Tensor | None:
    """(B, 1, q_len, k_len) mask for queries at the last q_len of k_len slots; None when no row is padded."""
    if not bool(pad.any()):
        return None
    k_idx = torch.arange(k_len, device=pad.device)
    q_idx = torch.arange(k_len - q_len, k_len, device=pad.device)
    mask = (k_idx[None, :] <= q_idx[:, None]) & (k_idx[None, None, :] >= pad[:, None, None])
    mask |= k_idx[None, :] == q_idx[:, None]  # pad queries see themselves: no empty softmax rows
    return mask.unsqueeze(1)


def prefill(model: Transformer, tokens: Tensor, pad: Tensor) -> Tensor:
    """Run left-padded prompts (B, T) through the model, filling cache slots 0..T-1; return last logits (B, V)."""
    T = tokens.shape[1]
    positions = (torch.arange(T, device=tokens.device)[None, :] - pad[:, None]).clamp(min=0)
    mask = _attention_mask(pad, T, T)
    return model(tokens, start=0, positions=positions, mask=mask, last_only=True)[:, -1]


def decode_step(model: Transformer, token: Tensor, slot: int, pad: Tensor) -> Tensor:
    """Feed one token per row (B,) at cache slot `slot`; return next-token logits (B, V)."""
    positions = (slot - pad)[:, None]
    mask = _attention_mask(pad, 1, slot + 1)
    return model(token[:, None], start=slot, positions=positions, mask=mask)[:, -1]


def process_logits(logits: Tensor, cfg: SamplingConfig, seen: Tensor | None, allowed: Tensor | None) -> Tensor:
    """Apply the constraint, repetition penalty, temperature and top-k/top-p/min-p filters (in that order)."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if seen is not None and cfg.repetition_penalty != 1.0:  # CTRL's penalty, as in Hugging Face
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if cfg.temperature == 0:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs > cfg.top_p  # keep the smallest head with mass >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    if cfg.min_p is not None and cfg.min_p > 0:
        probs = logits.softmax(dim=-1)
        logits = logits.masked_fill(probs < cfg.min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return logits


def choose(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> Tensor:
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    *,
    pad_id: int = 0,
    constraint: Constraint | None = None,
    on_token: OnToken | None = None,
) -> Generation:
    """Sample a continuation for every prompt at once (batched, KV-cached).

    When a row would run past the model's context, every row is re-prefilled from the last half of
    its context and decoding goes on (a sliding window), so `max_new_tokens` is never cut short.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    context = model.cfg.max_seq_len
    if max(len(p) for p in prompts) > context:
        raise ValueError(f"prompt of {max(len(p) for p in prompts)} tokens is longer than the model's context of {context}")
    device = model.embed.weight.device
    B, V = len(prompts), model.cfg.vocab_size
    width = max(len(p) for p in prompts)
    rows = [list(p) for p in prompts]
    tokens = torch.full((B, width), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = torch.tensor(p, dtype=torch.long, device=device)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, torch.tensor(p, device=device)] = True
    stop = torch.tensor(sorted(set(cfg.stop_tokens)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(B)]
    stopped = [False] * B

    was_training = model.training
    model.eval()
    model.setup_cache(B, min(context, width + cfg.max_new_tokens))
    try:
        logits, slot = prefill(model, tokens, pad), width
        for step in range(cfg.max_new_tokens):
            allowed = constraint(rows) if constraint is not None else None
            nxt = choose(process_logits(logits, cfg, seen, allowed), cfg, generator)
            nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
            is_stop = torch.isin(nxt, stop) & ~finished
            for i, t in enumerate(nxt.tolist()):
                if finished[i]:
                    continue
                if is_stop[i]:
                    stopped[i] = True
                else:
                    out[i].append(t)
                rows[i].append(t)
            finished |= is_stop
            if seen is not None:
                seen[torch.arange(B, device=device), nxt] = True
            if on_token is not None:
                on_token(step, nxt, finished)
            if bool(finished.all()) or step == cfg.max_new_tokens - 1:
                break
            if slot == context:  # slide: keep the newest half of the context and prefill again
                keep = context // 2
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)[:, -keep:]
                pad = (pad - (slot + 1 - keep)).clamp(min=0)
                logits, slot = prefill(model, tokens, pad), keep
                continue
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            logits = decode_step(model, nxt, slot, pad)
            slot += 1
    finally:
        model.clear_cache()
        model.train(was_training)
    return Generation(out, stopped)
