"""The spans infilling options name, in the modality's units (`--keep-bars 1-4,9-12`, `--redesign 40-60`,
`--keep-rows`): parsed once, checked against the prompt, every mistake one line naming the flag."""

from __future__ import annotations

import re

import numpy as np

from arseq.errors import DataError
from arseq.modalities.base import Fim


def parse_ranges(spec: str, count: int, flag: str, unit: str) -> list[tuple[int, int]]:
    """`1-4,9-12` (1-based, inclusive) as sorted 0-based half-open ranges within 0..count; one-line errors
    naming `flag` for a malformed, empty, reversed, overlapping or out-of-range one."""
    ranges = []
    for part in str(spec).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", part)
        if not m:
            raise DataError(f"{flag} {spec!r}: expected ranges of {unit}s like 1-4,9-12")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo < 1 or hi < lo:
            raise DataError(f"{flag} {spec!r}: {part.strip()} is not a range of {unit}s (first >= 1, last >= first)")
        if hi > count:
            raise DataError(f"{flag} {spec!r}: {unit} {hi} is outside the prompt, which has {count} {unit}s")
        ranges.append((lo - 1, hi))
    ranges.sort()
    for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
        if b0 < a1:
            raise DataError(f"{flag} {spec!r}: the ranges {a0 + 1}-{a1} and {b0 + 1}-{b1} overlap")
    return ranges


def gap_of(kept: list[tuple[int, int]], count: int, flag: str, unit: str) -> tuple[int, int]:
    """The one run of units not kept, [a, b); an error when nothing or more than one run is left out."""
    covered = np.zeros(count, dtype=bool)
    for lo, hi in kept:
        covered[lo:hi] = True
    missing = np.flatnonzero(~covered)
    if not len(missing):
        raise DataError(f"{flag}: every {unit} is kept, nothing to regenerate")
    if missing[-1] - missing[0] + 1 != len(missing):
        raise DataError(f"{flag}: the {unit}s to regenerate must be one run (fill one gap per call), not {', '.join(str(i + 1) for i in missing)}")
    return int(missing[0]), int(missing[-1]) + 1


def check_fim(fim: Fim | None, flag: str) -> Fim:
    """The model's sentinels, or one line saying it cannot infill."""
    if fim is None:
        raise DataError(
            f"{flag}: this model was trained without fill-in-the-middle and cannot infill; "
            "train one with data.fim_rate > 0 (e.g. --data.fim_rate 0.5)"
        )
    return fim
