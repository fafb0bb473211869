"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a proposer guesses the next K tokens,
the target model scores all of them in one pass and keeps the longest acceptable prefix plus one token
of its own, so one target pass yields 1 to K+1 tokens.

Exact: both models' logits go through the same `process_logits` (constraint, repetition penalty,
temperature, top-k/top-p/min-p); a proposal d with draft probability q(d) is kept with probability
min(1, p(d)/q(d)) and the first rejected one is replaced by a draw from max(0, p - q), renormalised, so
every token is distributed exactly as the target's (greedy: kept while it is the target's argmax, so the
output is plain greedy decoding's, up to float rounding of a K+1-token pass). Proposers: `DraftModel`
(a smaller model with the same tokenizer) and `NGram` (prompt lookup, no model).

Rows keep their own pace (arseq.models.row_cache): rows of a batch accept different numbers of tokens
and each row reads exactly the keys it would alone. A row whose window reaches the context slides to its
newest half, as plain `generate` does for a batch of one (plain slides a batch when its widest row does).

The constraint sees each row's tokens; besides growing, a row now also shrinks between two calls when
proposals are rejected (never both in one interval): see docs/plugins.md.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from arseq.models.inference import Compile, compile_mode
from arseq.models.ngram_draft import lookup
from arseq.models.row_cache import RowCache
from arseq.models.sampling import (Constraint, Generation, OnToken, SamplingConfig, check_head, choose, generate,
                                   process_logits)
from arseq.models.transformer import Transformer


@dataclass
class SpecStats:
    """What a speculative run did: proposals made and kept, target passes (one per row and pass), tokens, time."""

    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, other: SpecStats) -> None:
        for key in ("proposed", "accepted", "target_passes", "tokens", "seconds"):
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def as_dict(self) -> dict[str, float]:
        return {
            "acceptance_rate": round(self.accepted / self.proposed, 4) if self.proposed else 0.0,
            "tokens_per_target_pass": round(self.tokens / self.target_passes, 4) if self.target_passes else 0.0,
            "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds else 0.0,
            "proposed": self.proposed, "accepted": self.accepted, "target_passes": self.target_passes, "tokens": self.tokens,
        }

    def line(self) -> str:
        d = self.as_dict()
        return (f"speculative: acceptance {d['acceptance_rate']:.1%}, {d['tokens_per_target_pass']:.2f} tokens per target pass, "
                f"{d['tokens_per_s']:.1f} tokens/s")


@dataclass
class SpecGeneration(Generation):
    stats: SpecStats = field(default_factory=SpecStats)


class DraftModel:
    """Proposals sampled from a smaller model; its processed distribution q enters the accept rule."""

    def __init__(self, model: Transformer):
        self.model = model
        self.cache: RowCache | None = None


@dataclass
class NGram:
    """Prompt-lookup proposals (arseq.models.ngram_draft). Adaptive: the number proposed shrinks while
    proposals are rejected and grows back while they are kept, so a poor match costs little."""

    n: int = 6  # longer n-grams are rarer but surer: on music, 6..3 kept 77 % of proposals, 3..2 only 56 %
    min_n: int = 3


def _slots(width: int, steps: int, k: int, context: int) -> int:
    """Cache slots: enough for the whole run when it fits the context, else for a slide (compaction frees holes)."""
    if width + steps <= context:
        return width + steps + 4 * (k + 2)
    return context + context // 2 + k + 2


@torch.inference_mode()
def speculative_generate(
    model: Transformer,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    proposer: DraftModel | NGram,
    *,
    k: int = 4,
    pad_id: int = 0,
    constraint: Constraint | None = None,
    on_token: OnToken | None = None,
    seeds: list[int] | None = None,
    compile: Compile = False,
    head: int = 0,
) -> SpecGeneration:
    """Like arseq.models.sampling.generate (same arguments and result), with proposals from `proposer`:
    up to `k` per target pass. The result's `stats` say how many were kept. `compile` compiles both
    models' passes of one token and the target's of k + 1 (the draft's of 2: what it catches up per pass)."""
    t0 = time.perf_counter()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    if k < 1:
        raise ValueError(f"--draft-tokens must be >= 1, got {k}")
    context, V = model.cfg.max_seq_len, model.cfg.vocab_size
    width = max(len(p) for p in prompts)
    if width > context:
        raise ValueError(f"prompt of {width} tokens is longer than the model's context of {context}")
    check_head(head, prompts, context)
    draft = proposer.model if isinstance(proposer, DraftModel) else None
    if draft is model:
        raise ValueError("--draft: the draft must be another model object than the target (they hold separate caches)")
    if draft is not None:
        if draft.cfg.vocab_size != V:
            raise ValueError(f"--draft: its vocabulary has {draft.cfg.vocab_size} tokens, the model's {V}")
        k = min(k, max(1, draft.cfg.max_seq_len // 2 - 1))
    device = model.norm.weight.device
    B, steps = len(prompts), cfg.max_new_tokens
    if seeds is not None and len(seeds) != B:
        raise ValueError(f"{len(seeds)} seeds for {B} prompts")
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds] if seeds is not None else None
    shared = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None and gens is None else None
    seqs = [list(p) for p in prompts]  # committed tokens, plus this round's proposals while it runs
    gen: list[list[int]] = [[] for _ in prompts]  # generated, stop token included
    done, stopped = [False] * B, [False] * B
    stop = set(cfg.stop_tokens)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, p] = True
    stats, emitted = SpecStats(), 0
    want = k if draft is not None else max(1, k // 2)  # proposals per pass; the n-gram proposer adapts it
    skip, backoff = 0, 1  # n-gram: passes left without proposals, and the next such pause
    models = [(model, RowCache(model, B, _slots(width, steps, k, context), pad_id, compile, width=k + 1))]
    if draft is not None:
        models.append((draft, RowCache(draft, B, _slots(width, steps, k, draft.cfg.max_seq_len), pad_id, compile, width=2)))
    target, dcache = models[0][1], models[-1][1] if draft is not None else None
    give_up = GIVE_UP[device.type == "cpu" and compile_mode(compile) != "off"]
    was = [(m, m.training) for m, _ in models]
    for m, _ in models:
        m.eval()
    try:
        while not all(done):
            active = [not d for d in done]
            L = [len(s) for s in seqs]
            for i in range(B):  # a row whose window is full slides to its newest half (as plain generate)
                if active[i] and L[i] - target.start[i] > context:
                    target.restart(i, L[i] - context // 2, head)
            room = min(context - (L[i] - target.start[i]) for i in range(B) if active[i])
            budget = max(steps - len(gen[i]) for i in range(B) if active[i]) - 1
            k_r = max(0, min(want, room, budget)) if not skip else 0
            skip = max(0, skip - 1)
            if draft is not None and k_r > 0:
                dctx = draft.cfg.max_seq_len
                for i in range(B):
                    if active[i] and L[i] + k_r - 1 - dcache.start[i] > dctx:
                        dcache.restart(i, L[i] - dctx // 2, min(head, dctx // 2 - 1))
            if draft is None and k_r > 0:
                props = [lookup(s, k_r, proposer.n, proposer.min_n) if a else [] for s, a in zip(seqs, active)]
            else:
                props = [[] for _ in range(B)]
            nprop = [k_r if draft is not None and a else len(p) for p, a in zip(props, active)]
            k_r = max(nprop)
            allowed_s, seen_s, q_s = [], [seen] if seen is not None else [], []
            for j in range(k_r):  # propose, one token at a time (the constraint sees rows grow)
                allowed = constraint(seqs).to(device) if constraint is not None else None
                allowed_s.append(allowed)
                if draft is not None:
                    logits = process_logits(dcache.feed(seqs, active)[:, -1], cfg, seen, allowed)
                    d = choose(logits, cfg, gens if gens is not None else shared).tolist()
                    if cfg.temperature > 0:
                        q_s.append(logits.softmax(-1))
                    for i in range(B):
                        if active[i]:
                            props[i].append(d[i])
                grow = [i for i in range(B) if j < nprop[i]]
                for i in grow:
                    seqs[i].append(props[i][j])
                if seen is not None:
                    seen = seen.clone()
                    seen[grow, [props[i][j] for i in grow]] = True
                    seen_s.append(seen)
            logits = target.feed(seqs, active)  # every proposal scored in one pass
            stats.target_passes += sum(active)
            if k_r == 0:  # nothing proposed: a plain decoding step
                allowed = constraint(seqs).to(device) if constraint is not None else None
                n = [0] * B
                c = choose(process_logits(logits[:, -1], cfg, seen, allowed), cfg, gens if gens is not None else shared).tolist()
            else:
                n, c, seen = _verify(logits, seqs, L, props, nprop, k_r, cfg, constraint, allowed_s, seen_s, q_s, gens, shared, active)
                target.rollback([L[i] + n[i] for i in range(B)])
                if dcache is not None:
                    dcache.rollback([L[i] + n[i] for i in range(B)])
            for i in range(B):
                if not active[i]:
                    continue
                stats.proposed += nprop[i]
                stats.accepted += n[i]
                del seqs[i][L[i] :]  # then grown again, cut at a stop token or the budget
                for t in props[i][: n[i]] + [c[i]]:
                    seqs[i].append(t)
                    gen[i].append(t)
                    stats.tokens += 1
                    if seen is not None:
                        seen[i, t] = True
                    if t in stop:
                        done[i] = stopped[i] = True
                    elif len(gen[i]) >= steps:
                        done[i] = True
                    if done[i]:
                        break
            if draft is None and any(nprop):  # n-gram: more proposals while they are kept, fewer (none for a while) if not
                if all(n[i] == nprop[i] for i in range(B) if nprop[i]):
                    want, backoff = min(k, want + 1), 1
                elif want > 1:
                    want -= 1
                else:
                    skip, backoff = backoff, min(32, 2 * backoff)
            if on_token is not None:
                emitted = _emit(on_token, gen, done, stopped, emitted, pad_id)
            whole = constraint is None and cfg.repetition_penalty == 1.0  # nothing needs the tokens before the window
            if draft is None and not done[0] and _give_up(stats, B, target.start[0] == 0 or whole, give_up):
                if len(seqs[0]) - target.start[0] > context:  # the window is full: slide as plain decoding would
                    target.restart(0, len(seqs[0]) - context // 2, head)
                _plain_rest(model, target.window(0, seqs[0]), gen[0], stopped, steps, cfg, pad_id, constraint, on_token,
                            gens[0] if gens is not None else shared, stats, compile, head)
                break
    finally:
        for m, training in was:
            m.clear_cache()
            m.train(training)
    stats.seconds = time.perf_counter() - t0
    tokens = [g[:-1] if s else g for g, s in zip(gen, stopped)]
    return SpecGeneration(tokens, stopped, stats)


def _verify(logits: Tensor, seqs: list[list[int]], L: list[int], props: list[list[int]], nprop: list[int], k_r: int,
            cfg: SamplingConfig, constraint: Constraint | None, allowed_s: list, seen_s: list, q_s: list, gens, shared,
            active: list[bool]) -> tuple[list[int], list[int], Tensor | None]:
    """Accept/reject the proposals of one pass; return per row the number kept, the target's own next token,
    and the repetition-penalty `seen` after the kept ones. Rows are cut back to their kept proposals."""
    B, V, device = logits.shape[0], logits.shape[-1], logits.device
    T = logits.shape[1]
    cols = torch.tensor([[T - 1 - nprop[i] + min(j, nprop[i]) for j in range(k_r + 1)] for i in range(B)], device=device)
    logits = logits.gather(1, cols[:, :, None].expand(-1, -1, V))  # (B, k_r + 1, V): position L + j
    n = _accepted(logits, props, nprop, k_r, cfg, allowed_s, seen_s, q_s, gens, shared, active)
    for i in range(B):
        del seqs[i][L[i] + n[i] :]
    allowed = constraint(seqs).to(device) if constraint is not None else None  # rows only shrank
    at, rows = torch.tensor(n, device=device), torch.arange(B, device=device)
    seen = torch.stack(seen_s, 1)[rows, at].clone() if seen_s else None
    final = process_logits(logits[rows, at], cfg, seen, allowed)
    return n, _correction(final, at, props, nprop, q_s, cfg, gens, shared), seen


# When n-gram proposals do not pay for themselves: (after how many tokens, under how many tokens per target
# pass), by whether passes are compiled on a CPU. Eager (and on a GPU) the loop's own cost is what counts:
# sampled text and music at 1.00-1.14 tokens per pass were slower than plain decoding, greedy music at 1.23
# faster, and greedy text reaches 2.12 only after its first 16 tokens. A compiled CPU pass of k + 1 tokens
# costs 2.4-3.2 one-token passes (bound by arithmetic, docs/speculative.md): text at 2.12 tokens per pass was
# 0.82x plain compiled decoding, the 8 x 384 target at 3.66 1.56x; deciding after 16 tokens there instead of
# 32 took the arms that give up from 0.93-0.96x to 0.94-0.98x. Constants, not timings, so that a seed gives
# the same samples however loaded the machine is.
GIVE_UP = {False: (32, 1.15), True: (16, 2.5)}


def _give_up(stats: SpecStats, batch: int, window_ok: bool, rule: tuple[int, float]) -> bool:
    """Whether n-gram proposals pay too little (`rule`: fewer tokens per pass than its second figure after its
    first) and one row can go on with plain `generate` from its window (unless that slid and a constraint or
    penalty needs the whole row)."""
    after, break_even = rule
    return batch == 1 and window_ok and stats.tokens >= after and stats.tokens < break_even * stats.target_passes


def _plain_rest(model: Transformer, seq: list[int], gen: list[int], stopped: list[bool], steps: int, cfg: SamplingConfig,
                pad_id: int, constraint: Constraint | None, on_token: OnToken | None, generator: torch.Generator | None,
                stats: SpecStats, compile: Compile, head: int) -> None:
    """Finish one row with plain decoding (fresh seed drawn from the row's generator: the same distribution)."""
    seeds = [int(torch.randint(0, 2**62, (1,), generator=generator))] if generator is not None else None
    offset = len(gen)
    shifted = (lambda step, tokens, finished: on_token(step + offset, tokens, finished)) if on_token is not None else None
    rest = generate(model, [list(seq)], replace(cfg, max_new_tokens=steps - offset, seed=None), pad_id=pad_id,
                    constraint=constraint, on_token=shifted, seeds=seeds, compile=compile, head=head)
    new = rest.tokens[0] + ([cfg.stop_tokens[0]] if rest.stopped[0] and cfg.stop_tokens else [])
    gen += new
    stopped[0] = rest.stopped[0]
    stats.tokens += len(new)
    stats.target_passes += len(new)


def _rand(count: list[int], gens: list[torch.Generator] | None, shared: torch.Generator | None, device: torch.device) -> Tensor:
    """(B, max count) uniforms; with per-row generators a row draws only its own count (batch-independent)."""
    width = max(count)
    if gens is None:
        return torch.rand(len(count), width, generator=shared, device=device)
    out = torch.ones(len(count), width, device=device)
    for i, g in enumerate(gens):
        if count[i]:
            out[i, : count[i]] = torch.rand(count[i], generator=g, device=device)
    return out


def _accepted(logits: Tensor, props: list[list[int]], nprop: list[int], k_r: int, cfg: SamplingConfig,
              allowed_s: list, seen_s: list, q_s: list, gens, shared, active: list[bool]) -> list[int]:
    """How many proposals each row keeps: while the target's argmax (greedy) or while u * q(d) < p(d)."""
    B, device = logits.shape[0], logits.device
    if k_r == 0:
        return [0] * B
    V = logits.shape[-1]
    d = torch.tensor([p + [0] * (k_r - len(p)) for p in props], device=device)  # (B, k_r)
    flat = logits[:, :k_r].reshape(B * k_r, V)
    seen = torch.stack(seen_s[:k_r], 1).reshape(B * k_r, V) if seen_s else None
    allowed = torch.stack(allowed_s, 1).reshape(B * k_r, V) if allowed_s and allowed_s[0] is not None else None
    p = process_logits(flat, cfg, seen, allowed).view(B, k_r, V)
    if cfg.temperature == 0:
        ok = p.argmax(-1) == d
    else:
        pd = p.softmax(-1).gather(-1, d[..., None]).squeeze(-1)
        qd = torch.stack(q_s, 1).gather(-1, d[..., None]).squeeze(-1) if q_s else torch.ones_like(pd)
        ok = _rand(nprop, gens, shared, device) * qd < pd
    ok &= torch.arange(k_r, device=device)[None, :] < torch.tensor(nprop, device=device)[:, None]
    return ok.long().cumprod(1).sum(1).tolist()


def _correction(final: Tensor, at: Tensor, props: list[list[int]], nprop: list[int], q_s: list, cfg: SamplingConfig,
                gens, shared) -> list[int]:
    """The target's own token after the kept proposals: argmax, a draw from p after a full accept, or from
    the residual max(0, p - q) after a rejection (p itself where the residual vanishes)."""
    if cfg.temperature == 0:
        return final.argmax(-1).tolist()
    p = final.softmax(-1)
    B, device = p.shape[0], p.device
    rejected = at < torch.tensor(nprop, device=device)
    rows = torch.arange(B, device=device)
    if q_s:
        q = torch.stack(q_s, 1)[rows, at.clamp(max=len(q_s) - 1)]
    else:  # a deterministic proposal d: q is one-hot at d
        q = torch.zeros_like(p)
        d = [props[i][n] if n < len(props[i]) else 0 for i, n in enumerate(at.tolist())]
        q[rows, torch.tensor(d, device=device)] = 1.0
    residual = (p - q).clamp(min=0)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p)
    dist = torch.where(rejected[:, None], residual, p)
    return choose(dist.log(), _AS_SAMPLED, gens if gens is not None else shared).tolist()


_AS_SAMPLED = SamplingConfig(temperature=1.0)  # `choose` on already processed probabilities


def _emit(on_token: OnToken, gen: list[list[int]], done: list[bool], stopped: list[bool], emitted: int, pad_id: int) -> int:
    """Call on_token(step, tokens, finished) for every step all rows have reached, as plain generate does."""
    ready = min(len(g) if not d else 1 << 30 for g, d in zip(gen, done))
    ready = min(ready, max(len(g) for g in gen))
    for step in range(emitted, ready):
        tokens = torch.tensor([g[step] if step < len(g) else pad_id for g in gen])
        finished = torch.tensor([s and step >= len(g) - 1 for g, s in zip(gen, stopped)])
        on_token(step, tokens, finished)
    return max(emitted, ready)
