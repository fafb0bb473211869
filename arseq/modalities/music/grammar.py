"""The music sampling constraint: the score grammar's allowed tokens, and bar counts (`--bars`, `--min-bars`),
with the token budget they need."""

from __future__ import annotations

import numpy as np
import torch

from arseq.modalities.base import RowState, SamplingConfig
from arseq.tokenizers.score import DUR, Grammar, ScoreTokenizer


class GrammarConstraint:
    """Sampling constraint: only tokens the grammar allows; no EOS before `min_bars` new bars; after `bars`
    new bars, no new notes (only the bar lines a still-ringing note needs before EOS).

    Keeps one incremental `Grammar` per row (the sampler grows the same row lists in place) and, for the
    last `KEEP` prefix lengths, a snapshot and the mask: a row cut back (speculative decoding rejected
    tokens) resumes from there, or from scratch when cut back further.
    """

    KEEP = 64

    def __init__(self, tok: ScoreTokenizer, bars: int | None = None, min_bars: int = 0):
        self.tok, self.bars, self.min_bars = tok, bars, min_bars
        self.closing = np.zeros(tok.vocab_size, dtype=bool)
        self.closing[[tok.bar_id, tok.eos_id]] = True
        self.state: RowState[tuple[Grammar, dict[int, tuple], int]] = RowState()  # per row: (grammar, {len: (snapshot, mask)}, bars0)

    def __call__(self, rows: list[list[int]]) -> torch.Tensor:
        masks = np.zeros((len(rows), self.tok.vocab_size), dtype=bool)
        for i, row in enumerate(rows):
            g, saved, bars0 = self.state.get(row) or (Grammar(self.tok), {}, -1)
            fed = max(saved, default=0)
            if fed > len(row):  # cut back: resume from the longest kept prefix
                for n in [n for n in saved if n > len(row)]:
                    del saved[n]
                if len(row) in saved:
                    g.restore(saved[len(row)][0])
                    masks[i] = saved[len(row)][1]
                    continue
                g, fed = Grammar(self.tok), 0
                saved.clear()
            elif fed == len(row) and fed in saved:
                masks[i] = saved[fed][1]
                continue
            for t in row[fed:]:
                g.feed(int(t))
            if bars0 < 0:
                bars0 = len(g.bars)
            masks[i] = self._mask(g, bars0)
            saved[len(row)] = (g.snapshot(), masks[i].copy())
            if len(saved) > self.KEEP:
                del saved[min(saved)]
            self.state.set(row, (g, saved, bars0))
        return torch.from_numpy(masks)

    def _mask(self, g: Grammar, bars0: int) -> np.ndarray:
        mask = g.allowed()
        new_bars = len(g.bars) - bars0
        if new_bars < self.min_bars and mask.any():
            mask[self.tok.eos_id] = False  # too short to end yet (if nothing else fits, the row ends anyway)
            if not mask.any():
                mask[self.tok.eos_id] = True
        if self.bars is None:
            return mask
        room, bar = g.room(), g.bar  # room is None when bar is
        if room is not None and bar is not None and new_bars >= 1:  # no note rings past the last bar asked for (same-length bars assumed)
            room += max(0, self.bars - new_bars) * bar.length
            durs = mask[self.tok.start[DUR] : self.tok.start[DUR] + self.tok.max_dur]  # a view: Dur d at index d - 1
            if durs[:room].any():
                durs[room:] = False
        if new_bars > self.bars and (mask & self.closing).any():
            mask &= self.closing  # a bar opened only to let a held note end: no new notes in it
        if new_bars >= self.bars and mask[self.tok.eos_id]:
            mask[self.tok.bar_id] = False  # enough bars: end here (unless a note still rings on)
        return mask


# Without --bars, a sample's budget follows the training pieces up to this many tokens (about 60 chorale bars): a
# model that never ends, or long pieces (whole symphonies), would otherwise sample for minutes.
LEARNED_BUDGET_CAP = 2048


def sample_budget(bars: int | None, least: int, item_tokens: dict[str, int] | None) -> int:
    """Tokens a sample may take unless --max-new-tokens says: 64 a bar for --bars or --min-bars; without --bars,
    also as many as 95 % of the training pieces take, up to LEARNED_BUDGET_CAP (a budget of 512 cut half the Bach
    chorales before their end)."""
    budget = max(SamplingConfig.max_new_tokens, 64 * least)
    if bars is None and item_tokens and "p95" in item_tokens:
        budget = max(budget, min(item_tokens["p95"], LEARNED_BUDGET_CAP))
    return budget
