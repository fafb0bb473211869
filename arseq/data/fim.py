"""Fill in the middle (Bavarian et al. 2022): training windows cut into prefix, middle and suffix and reordered.

With `data.fim_rate` > 0, that share of training windows has one item (the longest run of one item's tokens in
the window) cut at two of the modality's unit boundaries (`Modality.fim_cuts`: bars, patch rows, residues,
characters) into prefix, middle and suffix, and reordered around three sentinel tokens reserved after the
tokenizer's ids and the control tokens:

    PSM: head <pre> prefix <suf> suffix <mid> middle tail
    SPM: head <pre> <suf> suffix <mid> prefix middle tail    (the paper's SPM: prefix and middle contiguous)

`head` is the item's BOS and control tokens where the window holds the item's start (conditions stay in front,
as sampling keeps them), `tail` its EOS: the model learns to end the middle where it joins the suffix. Where the
window holds the item's end, the result is a permutation of the item's tokens plus the three sentinels (the three
tokens they add fall off the window's end); where the item runs on past the window, its last four tokens there
make room for the sentinels and an EOS after the middle, so the window keeps its length and its middle's end. The same model still writes left to
right: the other windows, and the prefix, suffix and middle themselves, are ordinary text of the item.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from arseq.decode.infill import ORDERINGS, SENTINELS, Fim  # noqa: F401  (the sentinels live with decoding)

Cuts = Callable[[np.ndarray, int], np.ndarray]  # a body of an item's tokens, where it starts in the item -> cut positions


def reorder(tokens: np.ndarray, head: int, tail: int, cuts: np.ndarray, rng: np.random.Generator, fim: Fim, spm: bool) -> np.ndarray | None:
    """One item's tokens (`head` tokens in front and `tail` at the end kept in place) cut at two of the
    positions `cuts` of its body (plus its ends) and reordered; None when the body offers fewer than two."""
    body = tokens[head : len(tokens) - tail]
    points = np.unique(np.concatenate([[0, len(body)], np.asarray(cuts, dtype=np.int64)]))
    points = points[(points >= 0) & (points <= len(body))]
    if len(points) < 2:
        return None
    i, j = np.sort(rng.choice(points, size=2, replace=False))
    pre, mid, suf = body[:i], body[i:j], body[j:]
    p, s, m = np.array([fim.pre_id]), np.array([fim.suf_id]), np.array([fim.mid_id])
    parts = [p, s, suf, m, pre, mid] if spm else [p, pre, s, suf, m, mid]
    return np.concatenate([tokens[:head], *parts, tokens[len(tokens) - tail :]]).astype(tokens.dtype)


class FimWindows:
    """Applies FIM to a share of training windows (RandomWindows calls it after augmenting).

    Each window's stream positions (`index`) say which item every token belongs to (`offsets`); the longest
    run of one item is the one reordered. Its head is BOS and the control tokens (`head` tokens) where the run
    starts at the item's start, its tail the EOS where it ends at the item's end. A run the window cuts short
    (the item goes on past the window) gives up its last four tokens for the sentinels and an EOS that ends the
    middle: every FIM window shows where a middle stops (as Bavarian et al.'s end-of-text after the middle does),
    and the window keeps its length without losing the middle's end."""

    def __init__(self, fim: Fim, offsets: np.ndarray, head: int, cuts: Cuts | None = None, eos_id: int = 2):
        self.fim, self.offsets, self.head, self.cuts, self.eos_id = fim, np.asarray(offsets), head, cuts, eos_id

    def __call__(self, windows: np.ndarray, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        chosen = np.flatnonzero(rng.random(len(windows)) < self.fim.rate)
        if not len(chosen):
            return windows
        spm = rng.random(len(windows)) < {"psm": 0.0, "spm": 1.0, "both": 0.5}[self.fim.ordering]
        out = windows.copy()
        for b in chosen:
            item = np.searchsorted(self.offsets, index[b], side="right") - 1
            change = np.flatnonzero(np.diff(item)) + 1
            bounds = np.concatenate([[0], change, [len(item)]])
            k = int(np.argmax(np.diff(bounds)))
            s, e = int(bounds[k]), int(bounds[k + 1])
            it = int(item[s])
            head = self.head if index[b, s] == self.offsets[it] else 0
            run = windows[b, s:e]
            if index[b, e - 1] != self.offsets[it + 1] - 1:  # cut short: room for the sentinels and an EOS
                run = np.concatenate([run[: len(run) - self.fim.size - 1], [self.eos_id]]).astype(run.dtype)
            if len(run) <= head + 1:
                continue
            body = run[head:-1]
            first = int(index[b, s + head] - self.offsets[it])  # where the body starts in its item (past a headed window's jump)
            cuts = self.cuts(body, first) if self.cuts is not None else np.arange(len(body) + 1)
            seg = reorder(run, head, 1, cuts, rng, self.fim, bool(spm[b]))
            if seg is not None:
                out[b] = np.concatenate([windows[b, :s], seg, windows[b, e:]])[: windows.shape[1]]
        return out


def for_training(rate: float, ordering: str, prepared: Any, modality: Any) -> tuple[Fim | None, FimWindows | None]:
    """The sentinels (after the prepared data's vocabulary: tokenizer and control tokens) and the window transform
    of a training run with `data.fim_rate` / `data.fim_ordering`; (None, None) at rate 0."""
    fim = Fim.of(rate, ordering, prepared.vocab_size)
    if fim is None:
        return None, None
    controls = prepared.controls
    head = 1 + (controls.width if controls is not None else 0)  # BOS and the control tokens stay in front
    own = type(modality).fim_cuts

    def cuts(body: np.ndarray, start: int) -> np.ndarray:
        return own(modality, prepared.tokenizer, body, start)

    return fim, FimWindows(fim, np.asarray(prepared.train.offsets), head, cuts, prepared.tokenizer.eos_id)
