"""A piece as plain data: what the token stream means, independent of music21 and of ids."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Note:
    part: int
    onset: int  # grid steps from the start of the piece
    pitch: int  # MIDI number
    dur: int  # grid steps (0 for a grace note)
    vel: int = 64
    grace: int = 0  # 0: an ordinary note; k >= 1: a grace note notated as GRACE_KINDS[k - 1]


@dataclass
class Bar:
    start: int  # grid steps
    length: int
    ts: tuple[int, int]
    key: int  # sharps
    tempo: float | None = None  # quarter-note bpm in force from this bar on


# Why a note is not read back exactly (the keys of `Events.lost`), in words for `prepare`'s report.
LOSS_REASONS = {
    "off_grid": "onset or duration moved onto the grid",
    "microtone": "pitch rounded to a semitone",
    "pitch_range": "pitch outside MIDI 0..127 clamped",
    "past_last_bar": "note cut at the last bar line",
    "grace_dropped": "grace notes dropped (tokenizer without grace tokens)",
    "grace_notation": "grace note of an unsupported notated value written as the nearest",
    "zero_duration": "zero-length note (not a grace note) dropped",
    "unpitched": "unpitched (percussion) notes dropped",
    # found by the round trip itself (`arseq.modalities.music.reading.roundtrip_losses`)
    "grammar_repairs": "tokens the grammar had to repair (an encoder bug)",
    "changed_in_writing": "notes changed by decoding, writing and re-reading the score",
    "rebuild_failed": "the decoded score could not be rebuilt or re-read",
}


@dataclass
class Events:
    """A piece as plain data: what the token stream means, independent of music21."""

    bars: list[Bar]
    notes: list[Note]
    num_parts: int
    quantized: int = 0  # notes moved onto the grid (onset, duration, pitch)
    dropped: int = 0  # notes that could not be kept (unpitched, zero-length; graces without grace tokens)
    repairs: int = 0  # tokens skipped or fixed by `decode`
    lost: dict[str, int] = field(default_factory=dict)  # notes changed by reading, per LOSS_REASONS key


def note_order(n: Note) -> tuple:
    """The order of notes in the token stream: by part and onset, grace notes first (in reading order, as
    a stable sort keeps them), then by pitch and duration. Encoding and the grammar both rely on it."""
    return (n.part, n.onset, n.grace == 0, n.pitch if not n.grace else 0, n.dur)


def note_key(n: Note) -> tuple[int, int, int, int, int]:
    """What a faithful round trip must keep of a note (velocity is binned, so not compared)."""
    return n.part, n.onset, n.pitch, n.dur, n.grace


def clip_to_last_bar(notes: list[Note], bars: list[Bar]) -> tuple[list[Note], int]:
    """Cut notes that ring past the last bar line (the score ends there); also count them."""
    if not bars:
        return notes, 0
    end = bars[-1].start + bars[-1].length
    out = [n if n.onset + n.dur <= end else Note(n.part, n.onset, n.pitch, end - n.onset, n.vel, n.grace) for n in notes]
    return out, sum(n.onset + n.dur > end for n in notes)
