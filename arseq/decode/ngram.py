"""Draft-free proposals ("prompt lookup decoding"): the tokens that followed the latest earlier
occurrence of the sequence's last n-gram. Structured sequences (music, proteins, code) repeat a lot,
so this costs nothing and is often right."""

from __future__ import annotations

import numpy as np


def lookup(tokens: list[int], k: int, n: int = 3, min_n: int = 1) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest suffix of `tokens`
    of n down to min_n tokens; [] when none occurs."""
    size = len(tokens)
    if k < 1 or size < 2:
        return []
    seq = np.asarray(tokens)
    ends = np.flatnonzero(seq[: size - 1] == seq[-1])  # candidate earlier ends of the suffix
    if ends.size == 0:
        return []
    matched = np.ones(ends.size, dtype=np.int64)
    alive = np.ones(ends.size, dtype=bool)
    for d in range(1, min(n, size - 1)):
        ok = alive & (ends >= d)
        ok[ok] = seq[ends[ok] - d] == seq[size - 1 - d]
        alive = ok
        matched += alive
    best = matched.max()
    if best < min_n:
        return []
    end = int(ends[np.flatnonzero(matched == best)[-1]])  # the latest of the longest matches
    return [int(t) for t in seq[end + 1 : end + 1 + k]]
