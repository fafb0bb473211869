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


def _attention_mask(pad: Tensor, q_len: int, k_len: int) -> Tensor:
    """(B, 1, q_len, k_len) mask for queries at the last q_len of k_len slots of left-padded rows."""
    k_idx = torch.arange(k_len, device=pad.device)
    q_idx = torch.arange(k_len - q_len, k_len, device=pad.device)
    mask = (k_idx[None, :] <= q_idx[:, None]) & (k_idx[None, None, :] >= pad[:, None, None])
    mask |= k_idx[None, :] == q_idx[:, None]  # pad queries see themselves: no empty softmax rows
    return mask.unsqueeze(1)


def prefill(model: Transformer, tokens: Tensor, pad: Tensor | None) -> Tensor:
    """Run prompts (B, T), left-padded by `pad` (None: no row is), into cache slots 0..T-1; return last logits (B, V)."""
    T = tokens.shape[1]
    if pad is None:
        return model(tokens, start=0, last_only=True)[:, -1]
    positions = (torch.arange(T, device=tokens.device)[None, :] - pad[:, None]).clamp(min=0)
    return model(tokens, start=0, positions=positions, mask=_attention_mask(pad, T, T), last_only=True)[:, -1]


def decode_step(model: Transformer, token: Tensor, slot: int, pad: Tensor | None) -> Tensor:
    """Feed one token per row (B,) at cache slot `slot`; return next-token logits (B, V)."""
    if pad is None:
        return model(token[:, None], start=slot)[:, -1]
    positions = (slot - pad)[:, None]
    return model(token[:, None], start=slot, positions=positions, mask=_attention_mask(pad, 1, slot + 1))[:, -1]


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

    The loop stays on the device: it reads values back only for a constraint (which needs each row's
    tokens) and every few steps to stop early. When the context is full, every row is re-prefilled from
    the newest half of its context and decoding goes on (a sliding window).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    context = model.cfg.max_seq_len
    width = max(len(p) for p in prompts)
    if width > context:
        raise ValueError(f"prompt of {width} tokens is longer than the model's context of {context}")
    device = model.embed.weight.device
    B, V, steps = len(prompts), model.cfg.vocab_size, cfg.max_new_tokens
    buf = torch.full((B, width + steps), pad_id, dtype=torch.long, device=device)  # every token, left-padded
    for i, p in enumerate(prompts):
        buf[i, width - len(p) : width] = torch.tensor(p, dtype=torch.long)
    pad_lens = [width - len(p) for p in prompts]
    pad = torch.tensor(pad_lens, device=device) if any(pad_lens) else None
    generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        seen.scatter_(1, buf[:, :width], True)
        if pad is not None:
            seen[:, pad_id] = torch.tensor([any(t == pad_id for t in p) for p in prompts], device=device)
    stop = torch.tensor(sorted(set(cfg.stop_tokens)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)  # generated tokens before the stop token
    rows = [list(p) for p in prompts] if constraint is not None else []

    was_training = model.training
    model.eval()
    model.setup_cache(B, min(context, width + steps))
    try:
        logits, slot, done = prefill(model, buf[:, :width], pad), width, 0
        for step in range(steps):
            allowed = constraint(rows) if constraint is not None else None
            nxt = choose(process_logits(logits, cfg, seen, allowed), cfg, generator)
            nxt = torch.where(finished, pad_id, nxt)
            is_stop = torch.isin(nxt, stop) & ~finished
            lengths += ~finished & ~is_stop
            if constraint is not None:
                for row, t, was_done in zip(rows, nxt.tolist(), finished.tolist()):
                    if not was_done:
                        row.append(t)
            finished |= is_stop
            buf[:, width + step] = nxt
            done = step + 1
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            if on_token is not None:
                on_token(step, nxt, finished)
            if step == steps - 1 or ((constraint is not None or step % 8 == 7) and bool(finished.all())):
                break
            if slot == context:  # slide: keep the newest half of the context and prefill again
                keep, total = context // 2, width + step + 1
                if pad is not None:
                    pad = (pad - (total - keep)).clamp(min=0)
                logits, slot = prefill(model, buf[:, total - keep : total], pad), keep
                continue
            logits = decode_step(model, nxt, slot, pad)
            slot += 1
    finally:
        model.clear_cache()
        model.train(was_training)
    generated = buf[:, width : width + done].tolist()
    return Generation([g[:n] for g, n in zip(generated, lengths.tolist())], finished.tolist())
