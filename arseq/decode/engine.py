"""The decode engine: S slots that rows join and leave between steps (continuous batching, as vLLM's
scheduler). Requests wait in a queue, are prefilled into free slots, decode one token per step (or several
with speculative decoding, arseq.decode.speculative), stream their tokens and leave when done or cancelled.
The engine owns no threads: whoever drives it calls `step()` (a CLI call runs it to the end, a server from
its own loop).

Every row has its own position, tokens, sampling settings (as tensors: arseq.decode.logits), random stream
(arseq.decode.rng), constraint state, window head and token budget, and a guided row has a partner slot
running its prompt without conditions; so nothing about a row depends on which rows share its steps.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from arseq.decode import rng
from arseq.decode.config import Constraint, Finished, Row, SamplingConfig
from arseq.decode.logits import Params, choose, guided, not_finite, process_logits
from arseq.decode.slots import Slots
from arseq.models.inference import Compile
from arseq.models.transformer import Transformer

_IDLE = SamplingConfig(temperature=0.0)  # the settings of a free slot (its results are never read)


class Round(Protocol):
    """What the engine asks of speculative decoding (arseq.decode.speculative.Speculative, which imports
    the engine: a protocol keeps the import one way)."""

    k: int  # proposals per row and pass at most: the cache positions a pass may reach past a row's end

    def bind(self, engine: Engine) -> None: ...
    def round(self, engine: Engine) -> tuple[dict[int, list[int]], list[bool]]: ...
    def close(self) -> None: ...


@dataclass
class Live:
    """A row in a slot: its tokens (prompt + generated: what its constraint sees), its guide's (partner slot)."""

    id: int
    row: Row
    slot: int
    seed: int
    tokens: list[int]
    partner: int = -1
    guide: list[int] = field(default_factory=list)
    generated: int = 0

    def seq(self, slot: int) -> list[int]:
        return self.guide if slot == self.partner else self.tokens


class Engine:
    """Continuous batching over a static cache of `slots` rows of `length` positions (default: the context)."""

    @torch.inference_mode()
    def __init__(
        self,
        model: Transformer,
        slots: int = 8,
        *,
        length: int | None = None,
        compile: Compile = False,
        pad_id: int = 0,
        speculative: Round | None = None,
    ):
        context = model.cfg.max_seq_len
        self.length = min(length or context, context)
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if not 0 <= pad_id < model.cfg.vocab_size:
            raise ValueError(f"pad_id {pad_id} is not in the model's vocabulary of {model.cfg.vocab_size}")
        self.model, self.slots, self.pad_id, self.spec, self.compile = model, slots, pad_id, speculative, compile
        self.was_training = model.training
        model.eval()
        spare = speculative.k if speculative is not None else 0
        self.keep = self.length // 2  # positions a sliding row keeps (_slide): its prefill has a fixed length
        self.cache = Slots(model, slots, self.length, compile, spare, prefill_lengths=(self.keep - 1,))
        self.device, self.vocab = self.cache.device, model.cfg.vocab_size
        if speculative is not None:
            speculative.bind(self)
        self.ids = itertools.count()
        self.queue: deque[tuple[int, Row]] = deque()
        self.live: dict[int, Live] = {}  # slot -> its main row (partner slots are found through it)
        self.owner: dict[int, Live] = {}  # every busy slot -> its row
        self.cancelled: set[int] = set()
        self.free = list(range(slots))
        self.starts = [0] * slots  # where each slot's window leaves its sequence (after its head)
        self.fed = [0] * slots  # positions of each slot in the cache
        S, V, dev = slots, self.vocab, self.device
        self.cur = torch.full((S,), pad_id, dtype=torch.long, device=dev)  # the token each slot feeds next
        self.seeds, self.counts = [0] * S, [0] * S  # each row's random stream: its seed and draws so far
        self.seen = torch.zeros(S, V, dtype=torch.bool, device=dev)  # tokens in each row (repetition penalty)
        self.stops = torch.zeros(S, V, dtype=torch.bool, device=dev)  # each row's stop tokens
        self._update_settings()

    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def active(self) -> int:
        return len(self.live)

    def submit(self, row: Row) -> int:
        """Queue a row; it joins a free slot at a coming step. Returns its id."""
        check_row(row, self.length)
        if self.spec is not None and self._guided(row):
            raise ValueError("speculative decoding does not guide: use guidance 1 (off), or no draft")
        if self._guided(row) and self.slots < 2:
            raise ValueError("guidance runs two rows per sample (with and without conditions): it needs 2 slots or more")
        rid = next(self.ids)
        self.queue.append((rid, row))
        return rid

    def cancel(self, rid: int) -> None:
        """The row leaves at the next step (a no-op for ids unknown or finished)."""
        self.cancelled.add(rid)

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """Admit waiting rows into free slots, advance every row by a step; return the rows that ended."""
        self.cache.attach()
        done = self._drop_cancelled()
        self._admit()
        if not self.live:
            return done
        if self.spec is not None:
            chosen, bad = self.spec.round(self)
        else:
            self._slide()
            chosen, bad = self.plain_step(self.allowed())
        return done + self.commit(chosen, bad)

    def plain_step(self, allowed: Tensor) -> tuple[dict[int, list[int]], list[bool]]:
        """One token for every row (rows with room: `_slide` first): the pass, and the draw from the tokens
        each row is `allowed`; (slot -> [token], which rows' logits were not finite), for `commit`."""
        logits = self.cache.run(self.cur[:, None], self.fed)[:, -1]
        self._advance({s: 1 for s in self.owner})
        tokens, bad = self.choose(logits, allowed)
        return {slot: [tokens[slot]] for slot in self.live}, bad

    @torch.inference_mode()
    def warm(self) -> None:
        """Compile the decode step for every cache span it may read (a no-op when not compiled); see Slots.warm."""
        self.cache.attach()
        self.cache.warm()

    def run(self) -> list[Finished]:
        """Step until every submitted row has ended; return them in the order they ended."""
        out: list[Finished] = []
        while self.queue or self.live:
            out += self.step()
        return out

    def close(self) -> None:
        self.cache.close()
        if self.spec is not None:
            self.spec.close()
        self.model.train(self.was_training)

    # ---- joining and leaving -------------------------------------------------------------------------
    def _admit(self) -> None:
        loaded: dict[tuple[int, ...], int] = {}  # windows prefilled this step -> their slot (same prompt: copy)
        while self.queue and len(self.free) >= 1 + self._guided(self.queue[0][1]):
            rid, row = self.queue.popleft()
            seed = row.seed if row.seed is not None else row.cfg.seed
            seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,)))
            live = Live(rid, row, self.free.pop(0), seed & (2**63 - 1), list(row.prompt))
            slots = [live.slot]
            if self._guided(row):
                live.partner, live.guide = self.free.pop(0), list(row.guide or [])
                slots.append(live.partner)
            for slot in slots:
                self.owner[slot] = live
                self.starts[slot] = row.head
                self._load(slot, live.seq(slot), loaded)
                self._reset(slot, live)
            self.live[live.slot] = live
            self._update_settings()

    @staticmethod
    def _guided(row: Row) -> bool:
        return row.guide is not None and row.cfg.guidance != 1.0

    def _load(self, slot: int, seq: list[int], loaded: dict[tuple[int, ...], int]) -> None:
        """Prefill the slot's window but its last token, which the next pass feeds."""
        head = self.owner[slot].row.head
        window = seq[:head] + seq[self.starts[slot] :]
        key = tuple(window[:-1])
        if key in loaded:
            self.cache.copy(loaded[key], slot)
        else:
            self.cache.prefill(slot, window[:-1])
            loaded[key] = slot
        self.fed[slot] = len(window) - 1
        self.cur[slot] = window[-1]

    def _reset(self, slot: int, live: Live) -> None:
        cfg = live.row.cfg
        self.seeds[slot], self.counts[slot] = live.seed, 0
        self.seen[slot] = False
        self.seen[slot, torch.tensor(live.seq(slot), device=self.device)] = True
        self.stops[slot] = False
        if cfg.stop_tokens:
            self.stops[slot, torch.tensor(cfg.stop_tokens, device=self.device)] = True

    def _leave(self, live: Live, stopped: bool, cancelled: bool = False, error: str | None = None) -> Finished:
        gen = live.tokens[len(live.row.prompt) :]
        for slot in (live.slot, live.partner):
            if slot >= 0:
                self.owner.pop(slot, None)
                self.free.append(slot)
                self.fed[slot] = 0
        self.free.sort()
        del self.live[live.slot]
        return Finished(live.id, gen[:-1] if stopped else gen, stopped, cancelled, error)

    def _drop_cancelled(self) -> list[Finished]:
        if not self.cancelled:
            return []
        done = [Finished(rid, [], False, cancelled=True) for rid, _ in self.queue if rid in self.cancelled]
        self.queue = deque((rid, row) for rid, row in self.queue if rid not in self.cancelled)
        done += [self._leave(live, False, cancelled=True) for live in list(self.live.values()) if live.id in self.cancelled]
        self.cancelled.clear()
        if done:
            self._update_settings()
        return done

    def _update_settings(self) -> None:
        """The per-slot state that changes only when rows join or leave, derived once then rather than at
        every step: sampling settings, guidance scale, partner slot (itself if none), whether any row is
        guided, and the tokens each row may ever take: all but the pad id (padding, never a sample's token),
        unless the row stops on it."""
        cfgs = [self.owner[s].row.cfg if s in self.owner else _IDLE for s in range(self.slots)]
        partner = list(range(self.slots))
        for live in self.live.values():
            if live.partner >= 0:
                partner[live.slot] = live.partner
        dev = self.device
        self.params: Params = Params.of(cfgs, self.vocab, dev)
        self.guidance: Tensor = torch.tensor([c.guidance for c in cfgs], device=dev)
        self.partner: Tensor = torch.tensor(partner, device=dev)
        self.guides: bool = any(live.partner >= 0 for live in self.live.values())
        self.takeable: Tensor = torch.ones(self.slots, self.vocab, dtype=torch.bool, device=dev)  # (S, V), read-only
        self.takeable[[s for s, c in enumerate(cfgs) if self.pad_id not in c.stop_tokens], self.pad_id] = False

    # ---- one step ------------------------------------------------------------------------------------
    def _slide(self, room: int = 1) -> None:
        """Rows without `room` positions left slide: their head and newest tokens, half the cache, prefilled again."""
        for slot, live in self.owner.items():
            if self.fed[slot] + room > self.length:
                seq = live.seq(slot)
                self.starts[slot] = len(seq) - (self.keep - live.row.head)
                self._load(slot, seq, {})

    def _advance(self, fed: dict[int, int]) -> None:
        for slot, n in fed.items():
            self.fed[slot] += n

    def allowed(self, ahead: int = 0) -> Tensor:
        """(S, V) tokens each row may take next: never the pad id (unless it stops the row), its constraint's
        mask, stop tokens hidden until its min_new_tokens (`ahead`: tokens proposed past those generated); a
        row whose constraint allows nothing may only stop."""
        groups: dict[int, tuple[Constraint, list[int]]] = {}
        early = [s for s, live in self.live.items() if live.generated + ahead < live.row.cfg.min_new_tokens]
        for slot, live in self.live.items():
            if live.row.constraint is not None:
                groups.setdefault(id(live.row.constraint), (live.row.constraint, []))[1].append(slot)
        if not groups and not early:
            return self.takeable
        allowed = self.takeable.clone()
        for constraint, slots in groups.values():
            mask = constraint([self.live[s].tokens for s in slots])
            if tuple(mask.shape) != (len(slots), self.vocab):
                raise ValueError(f"a constraint returned a mask of shape {tuple(mask.shape)}, not ({len(slots)}, {self.vocab})")
            allowed[slots] &= mask.to(device=self.device, dtype=torch.bool)
        if early:
            allowed[early] &= ~self.stops[early]
        return allowed | (~allowed.any(-1, keepdim=True) & self.stops)

    def choose(self, logits: Tensor, allowed: Tensor) -> tuple[list[int], list[bool]]:
        """The next token of every slot from its logits (S, V), guided rows with their partner's; and which
        rows' logits were not finite."""
        if self.guides:
            has = (self.partner != torch.arange(self.slots, device=self.device))[:, None]
            logits = torch.where(has, guided(logits, logits[self.partner], self.guidance), logits.float())
        x = process_logits(logits, self.params, self.seen if self.penalised() else None, allowed)
        tokens = choose(x, self.params, self.keys(rng.TOKEN))
        self.counts = [c + 1 for c in self.counts]
        out = torch.stack([tokens, not_finite(x).long()]).tolist()
        return out[0], [bool(b) for b in out[1]]

    def penalised(self) -> bool:
        """Whether any row decoding now has a repetition penalty."""
        return any(live.row.cfg.repetition_penalty != 1.0 for live in self.live.values())

    def keys(self, stream: int) -> list[int] | None:
        """Every slot's key for its next draw of `stream` (None when no row samples)."""
        return rng.keys(self.seeds, self.counts, stream) if self.params.sampled else None

    def commit(self, chosen: dict[int, list[int]], bad: list[bool]) -> list[Finished]:
        """Append each row's chosen tokens (its slot -> one token, or 1 to k + 1 from speculative decoding),
        stream them, end rows at a stop token or their budget (`bad`, per slot: its logits were not finite);
        the slots of rows that go on feed their newest token next."""
        done: list[Finished] = []
        fed_slots, fed_tokens, seen_slots, seen_tokens = [], [], [], []
        for slot, live in list(self.live.items()):
            if bad[slot]:
                done.append(
                    self._leave(
                        live, False, error="the model's logits are not finite (NaN weights, or a guidance scale too large); no token could be drawn"
                    )
                )
                continue
            slots = [s for s in (live.slot, live.partner) if s >= 0]
            for t in chosen[slot]:
                live.tokens.append(t)
                seen_slots += slots
                seen_tokens += [t] * len(slots)
                if live.partner >= 0:
                    live.guide.append(t)
                live.generated += 1
                stopped = t in live.row.cfg.stop_tokens
                end = stopped or live.generated >= live.row.cfg.max_new_tokens
                if live.row.on_token is not None:
                    live.row.on_token(t, end)
                if end:
                    done.append(self._leave(live, stopped))
                    break
            else:
                fed_slots += slots
                fed_tokens += [live.tokens[-1]] * len(slots)
        if fed_slots:
            self.cur[fed_slots] = torch.tensor(fed_tokens, device=self.device)
        if seen_slots and self.penalised():  # only a penalised row reads its `seen` (every row's is rebuilt when it joins)
            self.seen[seen_slots, seen_tokens] = True
        if done:
            self._update_settings()
        return done


def check_row(row: Row, length: int) -> None:
    """One line for a row the engine cannot run (the CLI fits prompts to the context before this)."""
    if not row.prompt:
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    longest = max(len(row.prompt), len(row.guide or []))
    if longest > length:
        raise ValueError(f"prompt of {longest} tokens is longer than the model's context of {length}")
    if not 0 <= row.head <= min(len(row.prompt), length // 2 - 1):
        raise ValueError(f"head {row.head}: must be shorter than half the context and no longer than any prompt")
    if row.guide is not None and not row.guide:
        raise ValueError("a guide prompt needs at least one token")
