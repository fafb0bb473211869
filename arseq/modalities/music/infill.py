"""Music infilling (`generate --prompt FILE --keep-bars 1-4,9-12`): regenerate the bars not kept, in every part,
in the piece's meter and key, joining the bars after them (a model trained with `data.fim_rate` > 0).

The prompt is the piece's own tokens around the gap (as many bars on each side as the context holds next to
room for the middle). The middle is constrained by the score grammar fed the whole prefix: it starts with a
bar line, writes exactly the missing bars (no note rings past them), keeps the meter and key (no TS, key,
tempo or bar-length tokens of its own) and ends. The piece is then put together as events: the kept bars'
notes as they were, the new bars between them, so every kept bar is the original's note for note whatever
the middle's last part or ringing notes were (tokens alone would not guarantee it: a bar's first Part and Pos
tokens are left out when they repeat what came before).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arseq.errors import DataError
from arseq.modalities.base import Fim, MiddleView
from arseq.modalities.infill_ranges import gap_of, parse_ranges
from arseq.modalities.music.grammar import GrammarConstraint
from arseq.modalities.music.reading import read_events
from arseq.tokenizers.score import Events, ScoreTokenizer
from arseq.tokenizers.score.events import Bar
from arseq.tokenizers.score.vocab import KEY, KEY_RANGE, LEN, TEMPO, TS

log = logging.getLogger(__name__)
FLAG = "--keep-bars"


@dataclass
class MusicInfill:
    """One piece with a gap of bars [a, b): its tokens and events, and the prompt the model gets."""

    ids: list[int]  # the whole piece: BOS ... EOS
    events: Events
    bar_at: list[int]  # index of each bar line in `ids`
    a: int
    b: int

    @property
    def end(self) -> int:
        """Index in `ids` where the suffix starts (the EOS where the gap runs to the end)."""
        return self.bar_at[self.b] if self.b < len(self.bar_at) else len(self.ids) - 1

    @property
    def bars(self) -> int:
        return self.b - self.a

    def prompt(self, fim: Fim, bos: int, context: int) -> tuple[list[int], int]:
        """The infilling prompt (bars nearest the gap on both sides, as many as leave room for the middle
        within `context`) and the new tokens to allow (a middle longer than that room slides the window on, as
        any long sample does; the constraint still ends it after the missing bars)."""
        ids, at, n = self.ids, self.bar_at, len(self.bar_at)
        per_bar = (len(ids) - 2) / max(1, n)
        room = int(1.25 * per_bar * self.bars) + 16  # the middle in the context, a quarter over the piece's mean bar
        before, after = self.a, n - self.b  # bars kept on each side of the gap
        while True:
            prefix = ids[at[self.a - before] : at[self.a]] if self.a else []  # at[0] == 1: from the header on
            suffix = ids[self.end : at[self.b + after] if self.b + after < n else len(ids) - 1]
            prompt = fim.prompt([bos], prefix, suffix)
            if len(prompt) + room <= context or before + after == 0:
                break
            if before > after:
                before -= 1  # drop the farthest bar of the longer side
            else:
                after -= 1
        if len(prompt) + room > context:
            raise DataError(
                f"{FLAG}: {self.bars} bars to regenerate need ~{room} tokens, more than the model's context "
                f"of {context} leaves beside the bars next to them; regenerate fewer bars"
            )
        return prompt, max(context - len(prompt), int(3 * per_bar * self.bars) + 64)  # a long middle slides on

    def constraint(self, tok: ScoreTokenizer, fim: Fim, skip: int) -> MiddleView:
        """The grammar on the middle, fed the whole prefix: exactly the missing bars, the meter and key kept."""
        return MiddleView(KeepMeter(tok, self.bars, self.ids[: self.bar_at[self.a]], self.events.bars[self.a]), [], fim, skip)

    def complete(self, tok: ScoreTokenizer, middle: list[int]) -> Events:
        """The piece with the sampled middle between the kept bars (events: kept notes exactly as they were)."""
        made = tok.decode_events([*self.ids[: self.bar_at[self.a]], *middle, tok.eos_id])
        bars = made.bars[: self.b]
        while len(bars) < self.b:  # the middle ran out of tokens: the bars it did not write are rests
            last = bars[-1] if bars else self.events.bars[self.a]
            start = last.start + last.length if bars else 0
            bars.append(Bar(start, tok.ts_steps(last.ts), last.ts, last.key, None))
        if len(made.bars) < self.b:
            log.warning("an infilled middle ended after %d of %d bars; the rest are rests", len(made.bars) - self.a, self.bars)
        end = bars[-1].start + bars[-1].length
        notes = [n if n.onset + n.dur <= end else replace(n, dur=end - n.onset) for n in made.notes if n.onset < end]
        if self.b < len(self.events.bars):
            shift = end - self.events.bars[self.b].start
            bars += [replace(bar, start=bar.start + shift) for bar in self.events.bars[self.b :]]
            notes += [replace(n, onset=n.onset + shift) for n in self.events.notes if n.onset >= self.events.bars[self.b].start]
        return Events(bars, notes, max(self.events.num_parts, made.num_parts))


class KeepMeter:
    """GrammarConstraint on prefix + middle: exactly `bars` new bars, opened by a bar line at once, with the
    gap's meter, key and tempo (header tokens only where the grammar needs them, and then the gap's own)."""

    def __init__(self, tok: ScoreTokenizer, bars: int, prefix: list[int], bar: Bar):
        self.tok, self.prefix = tok, list(prefix)
        self.grammar = GrammarConstraint(tok, bars, bars)
        self.header = np.zeros(tok.vocab_size, dtype=bool)
        for kind in (TS, KEY, TEMPO, LEN):
            self.header[
                tok.start[kind] : tok.start[kind]
                + {TS: len(tok.time_signatures), KEY: len(KEY_RANGE), TEMPO: 32 if tok.tempo else 0, LEN: tok.max_bar}[kind]
            ] = True
        self.own = np.zeros(tok.vocab_size, dtype=bool)
        self.own[[tok.start[TS] + tok.ts_index[bar.ts], tok.start[KEY] + bar.key - KEY_RANGE.start]] = True
        self.rows: dict[int, tuple[list[int], list[int]]] = {}

    def __call__(self, middles: list[list[int]]) -> torch.Tensor:
        rows = []
        for m in middles:
            cached = self.rows.get(id(m))
            row = cached[1] if cached is not None and cached[0] is m else list(self.prefix)
            del row[len(self.prefix) + len(m) :]
            row.extend(m[len(row) - len(self.prefix) :])
            self.rows[id(m)] = (m, row)
            rows.append(row)
        mask = self.grammar(rows).numpy().copy()
        for i, m in enumerate(middles):
            if not m:  # the middle opens a new bar: the last kept bar stays as it was
                mask[i] &= np.arange(self.tok.vocab_size) == self.tok.bar_id
            mask[i] &= ~self.header | self.own
        return torch.from_numpy(mask)


def load_infill(tok: ScoreTokenizer, path: Path, keep: str) -> MusicInfill:
    """The prompt file's piece and the gap `--keep-bars` leaves; one-line errors."""
    events = read_events(tok, Path(path))
    ids = tok.encode_events(events)
    bar_at = [i for i, t in enumerate(ids) if t == tok.bar_id]
    if not bar_at:
        raise DataError(f"{FLAG}: the prompt {path} has no bars")
    a, b = gap_of(parse_ranges(keep, len(bar_at), FLAG, "bar"), len(bar_at), FLAG, "bar")
    return MusicInfill(ids, tok.decode_events(ids), bar_at, a, b)


def kept_notes(ev: Events, bars: range) -> list[tuple[Any, ...]]:
    """The notes of the bars `bars` of `ev`, onsets relative to their bar: what infilling must keep exactly."""
    out = []
    for k in bars:
        lo, hi = ev.bars[k].start, ev.bars[k].start + ev.bars[k].length
        out += sorted((k, n.part, n.onset - lo, n.pitch, n.dur, n.grace) for n in ev.notes if lo <= n.onset < hi)
    return out
