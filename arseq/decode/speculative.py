"""Speculative decoding on the engine (Leviathan et al. 2023; Chen et al. 2023): a proposer guesses up to k
next tokens per row, the target scores them all in one pass of k + 1 positions per slot, and each row keeps
its longest acceptable prefix plus one token of the target's own, so one pass yields 1 to k + 1 tokens.

Exact: target and draft logits go through the engine's `process_logits` (constraint, penalty, temperature,
filters); a proposal d with draft probability q(d) is kept with probability min(1, p(d)/q(d)) and the first
rejected one is replaced by a draw from max(0, p - q), renormalised, so every token is distributed as the
target's (greedy: kept while it is the target's argmax). Rows keep their own pace: a rejected proposal costs
nothing to undo (a slot's positions past its row's end are never read), and every row proposes, accepts and
draws from its own random stream, so a row's tokens do not depend on its neighbours'. Proposers: `DraftModel`
(a smaller model with the same tokenizer, its own slots) and `NGram` (prompt lookup, adaptive, no model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from arseq.decode import rng
from arseq.decode.engine import Engine, Live
from arseq.decode.logits import draw, not_finite, process_logits
from arseq.decode.ngram import lookup
from arseq.decode.slots import Slots
from arseq.models.inference import compile_mode
from arseq.models.transformer import Transformer

# When n-gram proposals do not pay for themselves: tokens per target pass, over the rounds a row proposed in,
# below which it gives up and decodes plainly from then on; by whether passes are compiled on a CPU. Eager (and
# on a GPU) the loop's own cost is what counts: sampled text and music at 1.00-1.14 tokens per pass were slower
# than plain decoding. A compiled CPU pass of k + 1 tokens costs 2.4-3.2 one-token passes (docs/speculative.md),
# so there proposals must keep 2.5 tokens per pass. Constants, not timings: a seed gives the same samples
# however loaded the machine is. A row is judged from its first proposing round on: judged only after 16 (32
# eager) tokens of proposing rounds, the rows that gave up had paid for up to 15 wide passes first. Same-process
# A/B, 1 thread, batch 1, 256 tokens, medians of 5, speed-up over plain decoding: compiled, text greedy
# 1.20 -> 1.24, text T 0.8 0.88 -> 0.96, music greedy 0.94 -> 0.97, music T 0.8 0.92 -> 0.97; eager 1.65 -> 1.64,
# 0.95 -> 0.98, 0.96 -> 0.96, 0.95 -> 0.98; at 1024 tokens (compiled) no arm lost either.
BREAK_EVEN = {False: 1.15, True: 2.5}


@dataclass
class SpecStats:
    """What speculative decoding did: proposals made and kept, target passes (one per row and pass), tokens, time."""

    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "acceptance_rate": round(self.accepted / self.proposed, 4) if self.proposed else 0.0,
            "tokens_per_target_pass": round(self.tokens / self.target_passes, 4) if self.target_passes else 0.0,
            "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds else 0.0,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "target_passes": self.target_passes,
            "tokens": self.tokens,
        }

    def line(self) -> str:
        d = self.as_dict()
        return (
            f"speculative: acceptance {d['acceptance_rate']:.1%}, {d['tokens_per_target_pass']:.2f} tokens per target pass, "
            f"{d['tokens_per_s']:.1f} tokens/s"
        )


@dataclass
class DraftModel:
    """Proposals sampled from a smaller model with the target's tokenizer; its distribution q enters the accept rule."""

    model: Transformer


@dataclass
class NGram:
    """Prompt-lookup proposals (arseq.decode.ngram). Adaptive per row: the number proposed shrinks while
    proposals are rejected (to none for a while) and grows back while they are kept."""

    n: int = 6  # longer n-grams are rarer but surer: on music, 6..3 kept 77 % of proposals, 3..2 only 56 %
    min_n: int = 3


@dataclass
class _RowState:
    want: int
    skip: int = 0
    backoff: int = 1
    tokens: int = 0  # tokens and target passes of the rounds this row proposed in (the give-up rule)
    passes: int = 0
    gave_up: bool = False  # its proposals did not pay: plain decoding from here
    draft_fed: int = 0  # the draft's positions of this row's window
    draft_start: int = -1  # where the draft's window leaves the row (after its head); -1: not loaded
    draft_base: int = 0  # the draft's positions after catching up this round


@dataclass
class Speculative:
    """The engine's speculative round (Engine(speculative=...)): up to `k` proposals per row and pass."""

    proposer: DraftModel | NGram
    k: int = 4
    stats: SpecStats = field(default_factory=SpecStats)

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"--draft-tokens must be >= 1, got {self.k}")
        self.draft: Slots | None = None
        self.rows: dict[int, _RowState] = {}  # row id -> its state

    def bind(self, engine: Engine) -> None:
        """Check the pair and give the draft its own slots (an engine does this when it starts)."""
        self.rows, self.draft = {}, None
        if isinstance(self.proposer, DraftModel):
            model, target = self.proposer.model, engine.model
            if model is target:
                raise ValueError("--draft: the draft must be another model object than the target (they hold separate caches)")
            if model.cfg.vocab_size != target.cfg.vocab_size:
                raise ValueError(f"--draft: its vocabulary has {model.cfg.vocab_size} tokens, the model's {target.cfg.vocab_size}")
            model.eval()
            self.k = min(self.k, max(1, model.cfg.max_seq_len // 2 - 1))
            length = min(model.cfg.max_seq_len, engine.length)
            self.draft = Slots(model, engine.slots, length, engine.compile, spare=self.k + 2)
        self.break_even = BREAK_EVEN[engine.device.type == "cpu" and compile_mode(engine.compile) != "off"]

    def round(self, engine: Engine) -> tuple[dict[int, list[int]], list[bool]]:
        """One target pass for every row: propose, verify, and the tokens each row keeps (engine.commit)."""
        engine._slide()
        live = engine.live
        states = {s: self.rows.setdefault(r.id, _RowState(self.k if self.draft else max(1, self.k // 2))) for s, r in live.items()}
        self.rows = {live[s].id: st for s, st in states.items()}
        want = {s: self._budget(engine, s, st) for s, st in states.items()}
        base = {s: len(r.tokens) for s, r in live.items()}
        if any(want.values()):
            props, allowed, q = self._propose(engine, want)
        else:  # no row proposes (all gave up or back off): nothing to look up (compiled at batch 1 that cost ~5 % of a step)
            props, allowed, q = {s: [] for s in live}, [engine.allowed()], []
        if not any(props.values()):  # nothing to verify (rows that gave up, no n-gram found): a plain step, which
            # draws the same tokens from the same streams as `_correct` would, without its residual arithmetic
            # (compiled, n-gram rows that gave up ran at 0.79x plain decoding this way; see docs/speculative.md)
            chosen, bad = engine.plain_step(allowed[0])
            self._account(states, props, {s: 0 for s in live}, {s: _kept_tokens(live[s], chosen[s]) for s in live})
            return chosen, bad
        width = 1 + max(len(p) for p in props.values())
        if width > 1 and engine.cache.compiled is not None:
            width = self.k + 1  # the compiled shape
        tokens = torch.full((engine.slots, width), engine.pad_id, dtype=torch.long, device=engine.device)
        tokens[:, 0] = engine.cur
        for s, p in props.items():
            if p:
                tokens[s, 1 : 1 + len(p)] = torch.tensor(p, device=engine.device)
        engine.cache.attach()
        logits = engine.cache.run(tokens, engine.fed)
        kept, bad = self._verify(engine, logits, props, allowed, q)
        for s, r in live.items():  # rows shrink to their kept proposals (the constraint sees it), then to
            del r.tokens[base[s] + kept[s] :]  # where they were: engine.commit appends what was kept
            engine.fed[s] += 1 + kept[s]
        final, wrong = self._correct(engine, logits, props, kept, q)
        for s, r in live.items():
            del r.tokens[base[s] :]
        chosen = {s: props[s][: kept[s]] + [final[s]] for s in live}
        self._account(states, props, kept, {s: _kept_tokens(live[s], chosen[s]) for s in live})
        return chosen, [a or b for a, b in zip(bad, wrong)]

    def _budget(self, engine: Engine, slot: int, st: _RowState) -> int:
        """Proposals this row may make now: its adaptive count, room in the cache, what is left of its budget."""
        live = engine.live[slot]
        if st.gave_up:
            return 0
        room = engine.length - engine.fed[slot] - 1
        left = live.row.cfg.max_new_tokens - live.generated - 1
        if st.skip:
            st.skip -= 1
            return 0
        return max(0, min(st.want, room, left))

    def _propose(self, engine: Engine, want: dict[int, int]) -> tuple[dict[int, list[int]], list[Tensor], list[Tensor]]:
        """Each row's proposals, grown onto its tokens one at a time (its constraint sees them), with the
        constraint mask and the draft's probabilities (sampled rows) at every position 0..k."""
        live, k = engine.live, max(want.values(), default=0)
        props: dict[int, list[int]] = {s: [] for s in live}
        found: dict[int, list[int]] = {}
        logits: Tensor | None = None  # the draft's, after each row's newest token
        if isinstance(self.proposer, NGram):
            found = {s: lookup(live[s].tokens, w, self.proposer.n, self.proposer.min_n) if w else [] for s, w in want.items()}
            k = max((len(f) for f in found.values()), default=0)
        elif k:
            logits = self._catch_up(engine, want)
        allowed: list[Tensor] = []
        q: list[Tensor] = []
        for j in range(k + 1):
            allowed.append(engine.allowed(ahead=j))
            if j == k:
                break
            if logits is None:  # n-gram proposals
                step = {s: f[j] for s, f in found.items() if j < len(f)}
            else:
                x = process_logits(logits, engine.params, _seen(engine, props), allowed[j])
                q.append(x.softmax(-1))
                keys = engine.keys(rng.DRAFT + j)
                picked = (torch.where(engine.params.temperature > 0, draw(q[-1], keys), x.argmax(-1)) if keys else x.argmax(-1)).tolist()
                step = {s: picked[s] for s in live if j < want[s]}
                if j + 1 < k:
                    logits = self._draft_step(engine, step)
            for s, t in step.items():
                props[s].append(t)
                live[s].tokens.append(t)
        return props, allowed, q

    def _catch_up(self, engine: Engine, want: dict[int, int]) -> Tensor:
        """Feed the draft each proposing row's tokens it has not seen (1 or 2 after a round; a row that joined,
        lagged or must slide is prefilled again); return its logits (S, V) after each row's newest token."""
        draft, S = self.draft, engine.slots
        assert draft is not None  # a DraftModel's round: bind gave it its slots
        ctx = draft.length
        tokens = torch.full((S, 2), engine.pad_id, dtype=torch.long, device=engine.device)
        last = [0] * S
        pos = self._idle_positions(engine)
        draft.attach()
        for s, w in want.items():
            if not w:
                continue
            live, st = engine.live[s], self.rows[engine.live[s].id]
            head, seq = live.row.head, live.tokens
            window_len = head + len(seq) - st.draft_start
            if st.draft_start < 0 or window_len + w > ctx or not 1 <= window_len - st.draft_fed <= 2:
                if st.draft_start < 0 or window_len + w > ctx:
                    st.draft_start = head if len(seq) + w <= ctx else len(seq) - (ctx // 2 - head)
                window = seq[:head] + seq[st.draft_start :]
                draft.prefill(s, window[:-1])
                st.draft_fed = len(window) - 1
            window = seq[:head] + seq[st.draft_start :]
            feed = window[st.draft_fed :]
            tokens[s, : len(feed)] = torch.tensor(feed, device=engine.device)
            pos[s], last[s] = st.draft_fed, len(feed) - 1
            st.draft_fed += len(feed)
            st.draft_base = st.draft_fed
        logits = draft.run(tokens, pos)
        return logits[torch.arange(S, device=engine.device), torch.tensor(last, device=engine.device)]

    def _idle_positions(self, engine: Engine) -> list[int]:
        """Where slots that feed the draft nothing this pass write their padding: past their row's end."""
        pos = [0] * engine.slots
        for s, live in engine.live.items():
            st = self.rows.get(live.id)
            pos[s] = st.draft_fed if st is not None and st.draft_start >= 0 else 0
        return pos

    def _draft_step(self, engine: Engine, step: dict[int, int]) -> Tensor:
        """Feed the draft each proposing row's newest proposal; logits (S, V)."""
        tokens = torch.full((engine.slots, 1), engine.pad_id, dtype=torch.long, device=engine.device)
        pos = self._idle_positions(engine)
        for s, t in step.items():
            st = self.rows[engine.live[s].id]
            tokens[s, 0], pos[s] = t, st.draft_fed
            st.draft_fed += 1
        assert self.draft is not None  # a DraftModel's round: bind gave it its slots
        self.draft.attach()
        return self.draft.run(tokens, pos)[:, -1]

    def _verify(
        self, engine: Engine, logits: Tensor, props: dict[int, list[int]], allowed: list[Tensor], q: list[Tensor]
    ) -> tuple[dict[int, int], list[bool]]:
        """How many proposals each row keeps: while the target's argmax (greedy rows) or while u * q(d) < p(d)."""
        S, k, dev = engine.slots, len(allowed) - 1, engine.device
        kept = {s: 0 for s in engine.live}
        if k == 0:
            return kept, [False] * S
        d = torch.tensor([(props.get(s, []) + [0] * k)[:k] for s in range(S)], device=dev)  # (S, k)
        n = torch.tensor([len(props.get(s, [])) for s in range(S)], device=dev)
        seen = _seen_stack(engine, d, n)
        mask = torch.stack(allowed[:k], 1).flatten(0, 1)
        p = process_logits(logits[:, :k].flatten(0, 1), engine.params.repeat(k), seen, mask).view(S, k, -1)
        bad = torch.isnan(p).any(-1).any(-1)
        probs = p.softmax(-1)
        pd = probs.gather(-1, d[..., None]).squeeze(-1)
        qd = torch.stack(q, 1).gather(-1, d[..., None]).squeeze(-1) if q else torch.ones_like(pd)
        keys = engine.keys(rng.ACCEPT)
        u = rng.uniform(keys, k, dev) if keys else torch.ones(S, k, device=dev)
        ok = torch.where(engine.params.temperature[:, None] > 0, u * qd < pd, p.argmax(-1) == d)
        ok &= torch.arange(k, device=dev)[None, :] < n[:, None]
        out = torch.stack([ok.long().cumprod(1).sum(1), bad.long()]).tolist()
        return {s: out[0][s] for s in engine.live}, [bool(b) for b in out[1]]

    def _correct(
        self, engine: Engine, logits: Tensor, props: dict[int, list[int]], kept: dict[int, int], q: list[Tensor]
    ) -> tuple[list[int], list[bool]]:
        """The target's own token after each row's kept proposals: argmax, a draw from p after a full accept,
        from the residual max(0, p - q) after a rejection (p itself where the residual vanishes)."""
        S, dev = engine.slots, engine.device
        at = torch.tensor([kept.get(s, 0) for s in range(S)], device=dev)
        rows = torch.arange(S, device=dev)
        seen = _seen(engine, {s: props[s][: kept[s]] for s in kept})
        x = process_logits(logits[rows, at], engine.params, seen, engine.allowed())
        p = x.softmax(-1)
        n = torch.tensor([len(props.get(s, [])) for s in range(S)], device=dev)
        if q:
            qn = torch.stack(q, 1)[rows, at.clamp(max=len(q) - 1)]
        else:  # a deterministic proposal d: q is one-hot at d
            qn = torch.zeros_like(p)
            d = [props[s][kept[s]] if s in props and kept[s] < len(props[s]) else 0 for s in range(S)]
            qn[rows, torch.tensor(d, device=dev)] = 1.0
        residual = (p - qn).clamp(min=0)
        mass = residual.sum(-1, keepdim=True)
        residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p)
        dist = torch.where((at < n)[:, None], residual, p)
        keys = engine.keys(rng.TOKEN)
        drawn = torch.where(engine.params.temperature > 0, draw(dist, keys), x.argmax(-1)) if keys else x.argmax(-1)
        engine.counts = [c + 1 for c in engine.counts]
        out = torch.stack([drawn, not_finite(x).long()]).tolist()
        return out[0], [bool(b) for b in out[1]]

    def _account(self, states: dict[int, _RowState], props: dict[int, list[int]], kept: dict[int, int], tokens: dict[int, int]) -> None:
        """Stats, the n-gram's adaptive count per row, and its give-up rule; the draft's kept positions."""
        for s, st in states.items():
            n, m = kept[s], len(props[s])
            self.stats.proposed += m
            self.stats.accepted += n
            self.stats.target_passes += 1
            self.stats.tokens += tokens[s]
            if m:  # the give-up rule weighs the rounds this row proposed in: one that found nothing to propose
                # yet (no n-gram of it so far) has not shown that proposals do not pay
                st.tokens, st.passes = st.tokens + tokens[s], st.passes + 1
            if self.draft is not None and m:
                st.draft_fed = min(st.draft_fed, st.draft_base + n)  # its proposals past the kept ones are void
            elif m:
                if n == m:
                    st.want, st.backoff = min(self.k, st.want + 1), 1
                elif st.want > 1:
                    st.want -= 1
                else:
                    st.skip, st.backoff = st.backoff, min(32, 2 * st.backoff)
            if self.draft is None and st.tokens < self.break_even * st.passes:
                st.gave_up = True

    def close(self) -> None:
        if self.draft is not None:
            self.draft.close()


def _kept_tokens(live: Live, chosen: list[int]) -> int:
    """How many of a row's chosen tokens it keeps: up to its first stop token, within its budget."""
    cfg = live.row.cfg
    stops = [i for i, t in enumerate(chosen) if t in cfg.stop_tokens]
    return min(stops[0] + 1 if stops else len(chosen), cfg.max_new_tokens - live.generated)


def _seen(engine: Engine, props: dict[int, list[int]]) -> Tensor | None:
    """The repetition penalty's tokens per slot with this round's proposals so far."""
    if not engine.penalised():
        return None
    seen = engine.seen.clone()
    for s, p in props.items():
        seen[s, p] = True
    return seen


def _seen_stack(engine: Engine, d: Tensor, n: Tensor) -> Tensor | None:
    """(S * k, V): the penalty's tokens before each of the k positions (the proposals before it added)."""
    if not engine.penalised():
        return None
    S, k = d.shape
    add = torch.zeros(S, k, engine.vocab, dtype=torch.bool, device=d.device)
    valid = torch.arange(k, device=d.device)[None, :] < n[:, None]
    add[:, 1:].scatter_(2, d[:, :-1, None], valid[:, :-1, None])
    return (engine.seen[:, None] | add.cummax(1).values).flatten(0, 1)
