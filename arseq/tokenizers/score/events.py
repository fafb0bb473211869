"""A piece as plain data: what the token stream means, independent of music21 and of ids."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    part: int
    onset: int  # grid steps from the start of the piece
    pitch: int  # MIDI number
    dur: int  # grid steps
    vel: int = 64


@dataclass
class Bar:
    start: int  # grid steps
    length: int
    ts: tuple[int, int]
    key: int  # sharps
    tempo: float | None = None  # quarter-note bpm in force from this bar on


@dataclass
class Events:
    """A piece as plain data: what the token stream means, independent of music21."""

    bars: list[Bar]
    notes: list[Note]
    num_parts: int
    quantized: int = 0  # notes moved onto the grid (onset, duration, pitch)
    dropped: int = 0  # notes that could not be kept (grace notes, unpitched)
    repairs: int = 0  # tokens skipped or fixed by `decode`


def clip_to_last_bar(notes: list[Note], bars: list[Bar]) -> tuple[list[Note], int]:
    """Cut notes that ring past the last bar line (the score ends there); also count them."""
    if not bars:
        return notes, 0
    end = bars[-1].start + bars[-1].length
    out = [n if n.onset + n.dur <= end else Note(n.part, n.onset, n.pitch, end - n.onset, n.vel) for n in notes]
    return out, sum(n.onset + n.dur > end for n in notes)
