"""The music sampling constraint: the score grammar's allowed tokens, and bar counts (`--bars`, `--min-bars`),
with the token budget they need."""

from __future__ import annotations

import numpy as np
import torch

from arseq.modalities.base import RowState, SamplingConfig
from arseq.tokenizers.score import DUR, Grammar, ScoreTokenizer

# Tokens a bar takes, for budgets: a four-part chorale bar takes ~45, busier music more.
TOKENS_PER_BAR = 64
# Without --bars, a sample that has not ended LANDING_TOKENS before its `budget` writes no new bar after the
# one it is in (as if --bars had said so), so it ends at a bar line. Two bars' worth: the bar under way, and
# one bar of slack for a busy one. Why: the quick start's model (a 256-token window: it cannot see how long its
# piece has run) ended 7 of 16 chorales (seed 0); the 9 others ran into the 1,031-token budget and were cut
# mid-bar.
LANDING_TOKENS = 2 * TOKENS_PER_BAR


class GrammarConstraint:
    """Sampling constraint: only tokens the grammar allows; no EOS before `min_bars` new bars; after `bars`
    new bars, no new notes (only the bar lines a still-ringing note needs before EOS). Without `bars`, a row
    still writing LANDING_TOKENS before its `budget` ends after the bars it has opened by then.

    Keeps one incremental `Grammar` per row (the sampler grows the same row lists in place) and, for the
    last `KEEP` prefix lengths, a snapshot and the mask: a row cut back (speculative decoding rejected
    tokens) resumes from there, or from scratch when cut back further.
    """

    KEEP = 64

    def __init__(self, tok: ScoreTokenizer, bars: int | None = None, min_bars: int = 0, budget: int | None = None):
        self.tok, self.bars, self.min_bars = tok, bars, min_bars
        self.landing = None if bars is not None or budget is None else max(budget - LANDING_TOKENS, 0)
        self.closing = np.zeros(tok.vocab_size, dtype=bool)
        self.closing[[tok.bar_id, tok.eos_id]] = True
        # per row: (grammar, {len: (snapshot, mask)}, bars in its prompt, tokens in its prompt)
        self.state: RowState[tuple[Grammar, dict[int, tuple], int, int]] = RowState()

    def __call__(self, rows: list[list[int]]) -> torch.Tensor:
        masks = np.zeros((len(rows), self.tok.vocab_size), dtype=bool)
        for i, row in enumerate(rows):
            g, saved, bars0, len0 = self.state.get(row) or (Grammar(self.tok), {}, -1, len(row))
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
            masks[i] = self._mask(g, len(g.bars) - bars0, self._target(row, len0))
            saved[len(row)] = (g.snapshot(), masks[i].copy())
            if len(saved) > self.KEEP:
                del saved[min(saved)]
            self.state.set(row, (g, saved, bars0, len0))
        return torch.from_numpy(masks)

    def _target(self, row: list[int], len0: int) -> int | None:
        """The new bars this row ends after: `bars`, or once it has run `landing` tokens, the bars it had
        opened by then (at least `min_bars`, and 1): a function of the row alone, so that a row cut back
        (speculative decoding) and grown again gets the same target."""
        if self.landing is None or len(row) - len0 < self.landing:
            return self.bars
        return max(row[len0 : len0 + self.landing].count(self.tok.bar_id), self.min_bars, 1)

    def _mask(self, g: Grammar, new_bars: int, bars: int | None) -> np.ndarray:
        mask = g.allowed()
        if new_bars < self.min_bars and mask.any():
            mask[self.tok.eos_id] = False  # too short to end yet (if nothing else fits, the row ends anyway)
            if not mask.any():
                mask[self.tok.eos_id] = True
        if bars is None:
            return mask
        room, bar = g.room(), g.bar  # room is None when bar is
        if room is not None and bar is not None and new_bars >= 1:  # no note rings past the last bar asked for (same-length bars assumed)
            room += max(0, bars - new_bars) * bar.length
            durs = mask[self.tok.start[DUR] : self.tok.start[DUR] + self.tok.max_dur]  # a view: Dur d at index d - 1
            if durs[:room].any():
                durs[room:] = False
        if new_bars > bars and (mask & self.closing).any():
            mask &= self.closing  # a bar opened only to let a held note end: no new notes in it
        if new_bars >= bars and mask[self.tok.eos_id]:
            mask[self.tok.bar_id] = False  # enough bars: end here (unless a note still rings on)
        return mask


# Without --bars, a sample's budget follows the training pieces up to this many tokens (about 60 chorale bars): a
# model that never ends, or long pieces (whole symphonies), would otherwise sample for minutes.
LEARNED_BUDGET_CAP = 2048


def sample_budget(bars: int | None, least: int, item_tokens: dict[str, int] | None) -> int:
    """Tokens a sample may take unless --max-new-tokens says: TOKENS_PER_BAR a bar for --bars or --min-bars; without --bars,
    also as many as 95 % of the training pieces take, up to LEARNED_BUDGET_CAP (a budget of 512 cut half the Bach
    chorales before their end)."""
    budget = max(SamplingConfig.max_new_tokens, TOKENS_PER_BAR * least)
    if bars is None and item_tokens and "p95" in item_tokens:
        budget = max(budget, min(item_tokens["p95"], LEARNED_BUDGET_CAP))
    return budget
