"""Sampling with a static KV cache: prefill the prompts in one pass, then decode one token per step
(static shapes, optionally compiled: see arseq.models.decoding and arseq.models.inference).

Usable without Lightning. Prompts of different lengths are left-padded; per-row positions and a padding
mask keep every row exactly as if it were sampled alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from arseq.models.decoding import causal_mask, prefill
from arseq.models.inference import Compile, decoder
from arseq.models.transformer import Transformer

# Given each row's tokens so far (prompt + generated), return a bool tensor (rows, vocab): True where a
# token is allowed. The row lists persist between calls, so a constraint may keep per-row state keyed on
# them: between two calls a row grows (tokens appended) or, in speculative decoding, shrinks (rejected
# tokens removed from its end), never both (see docs/plugins.md and PrefixCounts).
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
    guidance: float = 1.0  # classifier-free guidance scale (with `generate(guide=...)`); 1 = the conditional model alone

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k is None or self.top_k >= 1, "top_k must be >= 1"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.min_p is None or 0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (self.guidance >= 0, "guidance must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class Generation:
    tokens: list[list[int]]  # per row: the continuation, stop token excluded
    stopped: list[bool]  # per row: ended on a stop token


def process_logits(logits: Tensor, cfg: SamplingConfig, seen: Tensor | None, allowed: Tensor | None) -> Tensor:
    """Apply the constraint, repetition penalty, temperature and top-k/top-p/min-p filters (in that order)."""
    logits = logits.float()
    if allowed is not None:
        empty = ~allowed.any(dim=-1)
        if cfg.stop_tokens and bool(empty.any()):  # a constraint that allows nothing ends the row (not a NaN)
            allowed = allowed.clone()
            allowed[empty.nonzero()[:, :1], torch.tensor(cfg.stop_tokens, device=allowed.device)] = True
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


def guided(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022; for language models Sanchez et al. 2023): the
    unconditional log-probabilities moved `scale` times the way the condition moves them."""
    base = uncond.float().log_softmax(dim=-1)
    return base + scale * (cond.float().log_softmax(dim=-1) - base)


def choose(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
    """Greedy, or a draw per row; with one generator per row, a row's draws do not depend on its batch."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _grow(buf: Tensor, need: int, pad_id: int) -> Tensor:
    """The token buffer, doubled until it holds `need` columns: memory follows what is generated, not max_new_tokens."""
    if need <= buf.shape[1]:
        return buf
    more = torch.full((buf.shape[0], max(need, 2 * buf.shape[1]) - buf.shape[1]), pad_id, dtype=buf.dtype, device=buf.device)
    return torch.cat([buf, more], dim=1)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    *,
    pad_id: int = 0,
    constraint: Constraint | None = None,
    on_token: OnToken | None = None,
    compile: Compile = False,
    seeds: list[int] | None = None,
    guide: list[list[int]] | None = None,
    head: int = 0,
) -> Generation:
    """Sample a continuation for every prompt at once (batched, KV-cached).

    The loop stays on the device: it reads values back only for a constraint (which needs each row's
    tokens) and every few steps to stop early. When the context is full, every row is re-prefilled from
    the newest half of its context and decoding goes on (a sliding window); the first `head` tokens of
    every prompt (a conditioned prompt's BOS and control tokens) stay in front of it. `compile` (True, "auto")
    runs the decode step through torch.compile, built once per batch size and cache length. `seeds`
    (one per prompt) seed each row on its own, so a row samples the same whatever batch it is in.
    `guide` (one per prompt: the prompt without its conditions) runs beside each row to guide it by
    `cfg.guidance` (classifier-free guidance: two rows per sample in every pass).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    if guide is not None and len(guide) != len(prompts):
        raise ValueError(f"{len(guide)} guide prompts for {len(prompts)} prompts")
    B = len(prompts)
    if guide is not None and cfg.guidance != 1.0:
        prompts = prompts + guide  # rows B.. run the guide prompts and are fed the tokens rows ..B choose
    else:
        guide = None
    context = model.cfg.max_seq_len
    width = max(len(p) for p in prompts)
    if width > context:
        raise ValueError(f"prompt of {width} tokens is longer than the model's context of {context}")
    check_head(head, prompts, context)
    device = model.norm.weight.device
    R, V, steps = len(prompts), model.cfg.vocab_size, cfg.max_new_tokens
    buf = torch.full((R, width + min(steps, context)), pad_id, dtype=torch.long, device=device)  # every token, left-padded
    for i, p in enumerate(prompts):
        buf[i, width - len(p) : width] = torch.tensor(p, dtype=torch.long)
    pad_lens = [width - len(p) for p in prompts]
    pad = torch.tensor(pad_lens, device=device) if any(pad_lens) else None
    if seeds is not None:
        if len(seeds) != B:
            raise ValueError(f"{len(seeds)} seeds for {B} prompts")
        generator: torch.Generator | list[torch.Generator] | None = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    else:
        generator = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        seen.scatter_(1, buf[:B, :width], True)
        if pad is not None:
            seen[:, pad_id] = torch.tensor([any(t == pad_id for t in p) for p in prompts[:B]], device=device)
    stop = torch.tensor(sorted(set(cfg.stop_tokens)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, dtype=torch.long, device=device)  # generated tokens before the stop token
    rows = [list(p) for p in prompts[:B]] if constraint is not None else []

    was_training = model.training
    model.eval()
    cache_len = min(context, width + steps)
    step_fn = decoder(model, R, cache_len, compile)  # attaches the KV cache
    causal = causal_mask(cache_len, device)
    try:
        logits, done = prefill(model, buf[:, :width], pad, causal), 0
        slot = torch.full((1,), width, dtype=torch.long, device=device)  # the next cache slot, on the device
        filled = width  # the same, as a Python int
        for step in range(steps):
            allowed = constraint(rows) if constraint is not None else None
            if guide is not None:
                logits = guided(logits[:B], logits[B:], cfg.guidance)
            nxt = choose(process_logits(logits, cfg, seen, allowed), cfg, generator)
            nxt = torch.where(finished, pad_id, nxt)
            is_stop = torch.isin(nxt, stop) & ~finished
            lengths += ~finished & ~is_stop
            if constraint is not None:
                for row, t, was_done in zip(rows, nxt.tolist(), finished.tolist()):
                    if not was_done:
                        row.append(t)
            finished |= is_stop
            feed = nxt if guide is None else torch.cat([nxt, nxt])
            buf = _grow(buf, width + step + 1, pad_id)
            buf[:, width + step] = feed
            done = step + 1
            if seen is not None:
                seen.scatter_(1, nxt[:, None], True)
            if on_token is not None:
                on_token(step, nxt, finished)
            if step == steps - 1 or ((constraint is not None or step % 8 == 7) and bool(finished.all())):
                break
            if filled == cache_len:  # slide: keep the newest half of the context and prefill again
                keep = context // 2
                window, pad = slid(buf, width + step + 1, keep, pad, head)
                logits, filled = prefill(model, window, pad, causal), keep
                slot.fill_(keep)
                continue
            logits = step_fn(model, feed, slot, pad, causal)
            slot += 1
            filled += 1
    finally:
        model.clear_cache()
        model.train(was_training)
    generated = buf[:B, width : width + done].tolist()
    return Generation([g[:n] for g, n in zip(generated, lengths.tolist())], finished.tolist())


def check_head(head: int, prompts: list[list[int]], context: int) -> None:
    """A prompt head that a slide can keep: no longer than any prompt, shorter than half the context."""
    if not 0 <= head <= min(min(map(len, prompts)), context // 2 - 1):
        raise ValueError(f"head {head}: must be shorter than half the context and no longer than any prompt")


def slid(buf: Tensor, total: int, keep: int, pad: Tensor | None, head: int) -> tuple[Tensor, Tensor | None]:
    """The window after a slide, left-padded, and its padding: each row's last `keep` of its `total` columns;
    with `head`, a row that had more real tokens than that keeps its first `head` real ones and its newest
    keep - head."""
    window = buf[:, total - keep : total]
    if pad is None and not head:
        return window, None
    lead = pad if pad is not None else torch.zeros(len(buf), dtype=torch.long, device=buf.device)
    if head:
        window = window.clone()
        for i, p in enumerate(lead.tolist()):
            if total - p > keep:  # cut: its head in front of its newest tokens
                window[i, :head] = buf[i, p : p + head]
    return window, (lead - (total - keep)).clamp(min=0) if pad is not None else None
