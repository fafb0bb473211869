"""Reading music21 scores into events: notes on the grid (ties merged), bars, meters, keys and tempi."""

from __future__ import annotations

import bisect
from collections import Counter
from fractions import Fraction
from typing import Any, Callable, Iterator

from arseq.tokenizers.score.events import Bar, Events, Note, clip_to_last_bar
from arseq.tokenizers.score.vocab import GRACE_KINDS, GRACE_TYPES, KEY_RANGE, ScoreVocab

BarGrid = Callable[[list, int], list[Bar]]  # (the score's parts, the notes' end in steps) -> bars


def read_score(vocab: ScoreVocab, score: Any, bar_grid: BarGrid | None = None) -> Events:
    """Notes (ties merged), bars, meters, keys and tempi of a music21 score, on the grid of `vocab`. Bars
    come from the score's measures, or from `bar_grid` for a score without them (`music21_midi`).

    Raises ValueError with a one-line reason for what this tokenizer cannot represent.
    """
    score, parts = _score_parts(vocab, score)
    lost: Counter[str] = Counter()
    notes = [n for pi, part in enumerate(parts) for n in _part_notes(vocab, pi, part, lost)]
    if not notes:
        raise ValueError("percussion only (no pitched notes)" if lost["unpitched"] else "empty score (no notes)")
    end = max(n.onset + max(1, n.dur) for n in notes)
    bars = bar_grid(parts, end) if bar_grid is not None else _bar_grid(vocab, parts, end)
    notes, lost["past_last_bar"] = clip_to_last_bar(notes, bars)
    _set_tempi(vocab, score, bars)
    lost = Counter({k: v for k, v in lost.items() if v})
    moved = ("off_grid", "microtone", "pitch_range", "past_last_bar", "grace_notation")
    dropped = ("grace_dropped", "zero_duration", "unpitched")
    return Events(bars, notes, len(parts), sum(lost[k] for k in moved), sum(lost[k] for k in dropped), lost=dict(lost))


def _score_parts(vocab: ScoreVocab, score: Any) -> tuple[Any, list[Any]]:
    """The score (an opus's first) and its parts with notes (all of them if none has any)."""
    from music21 import stream

    if isinstance(score, stream.Opus):
        if not score.scores:
            raise ValueError("empty score")
        score = score.scores[0]
    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    parts = [p for p in parts if p.recurse().notesAndRests.first() is not None] or parts
    if len(parts) > vocab.max_parts:
        raise ValueError(f"{len(parts)} parts; at most {vocab.max_parts} are supported")
    return score, parts


def _part_notes(vocab: ScoreVocab, pi: int, part: Any, lost: Counter[str]) -> list[Note]:
    """Part `pi`'s notes on the grid, tied notes merged into one; what could not be kept exactly is counted in `lost`."""
    notes: list[Note] = []
    open_ties: dict[int, list[int]] = {}  # pitch -> indices in notes of tied notes still open
    for off, el in _notes_with_offsets(part):
        grace = el.duration.isGrace
        if (grace and not vocab.grace) or (not grace and el.duration.quarterLength == 0):
            lost["grace_dropped" if grace else "zero_duration"] += len(getattr(el, "pitches", ())) or 1
            continue
        pitches = getattr(el, "pitches", ())
        if not pitches:
            lost["unpitched"] += 1
            continue
        onset, on_grid = grid_steps(Fraction(off), vocab.ppq)
        dur, dur_ok = (0, True) if grace else grid_steps(Fraction(el.duration.quarterLength), vocab.ppq)
        kind = _grace_kind(el.duration, lost) if grace else 0
        subs = el.notes if el.isChord else [el]
        vel = (el.volume.velocity or 64) if vocab.velocity else 64
        for sub, p in zip(subs, pitches):
            midi = round(p.ps)
            lost["off_grid"] += not (on_grid and dur_ok)
            lost["microtone"] += midi != p.ps
            lost["pitch_range"] += not 0 <= midi <= 127
            midi = min(127, max(0, midi))
            if grace:
                notes.append(Note(pi, onset, midi, 0, int(vel), kind))
                continue
            tie = sub.tie.type if sub.tie is not None else None
            if tie is None and el.isChord and el.tie is not None and not any(n.tie for n in subs):
                tie = el.tie.type  # a tie on the chord as a whole (a chord's tie is its first note's)
            _add_tied(notes, open_ties, Note(pi, onset, midi, max(1, dur), int(vel)), tie)
    return notes


def _set_tempi(vocab: ScoreVocab, score: Any, bars: list[Bar]) -> None:
    """Each bar's tempo: the last metronome mark at or before its start (checked sane even when not kept)."""
    from music21 import tempo as m21tempo

    marks = score.recurse().getElementsByClass(m21tempo.MetronomeMark)
    # a mark with words only ("Sehr langsam", no number) sets no tempo
    tempi = [(grid_steps(Fraction(el.getOffsetInHierarchy(score)), vocab.ppq)[0], bpm) for el in marks if (bpm := el.getQuarterBPM()) is not None]
    for _, bpm in tempi:
        if not 10 <= bpm <= 1000:
            raise ValueError(f"absurd tempo {bpm} bpm")
    if vocab.tempo and tempi:
        starts = [b.start for b in bars]
        for at, bpm in sorted(tempi):
            i = max(0, bisect.bisect_right(starts, at) - 1)
            for b in bars[i:]:
                b.tempo = bpm


def grid_steps(ql: Fraction, ppq: int) -> tuple[int, bool]:
    """(grid steps, exactly on the grid) of a music21 offset or quarterLength.

    A value music21 cannot hold as a small fraction (a triplet in a MusicXML file whose <divisions> do
    not divide by 3) it keeps as a rounded float, which becomes a Fraction with a large power-of-two
    denominator (43/256 for 1/6). Such a value within 1/384 of a quarter of a grid point is that point:
    notated values and tuplets (up to 16-tuplets) have small denominators and are never that close.
    """
    x = ql * ppq
    r = round(x)
    return r, x.denominator == 1 or (ql.denominator > 64 and abs(ql - Fraction(r, ppq)) <= Fraction(1, 384))


def _add_tied(notes: list[Note], open_ties: dict[int, list[int]], n: Note, tie: str | None) -> None:
    """Append a note, or extend the open tied note of its pitch that ends where it starts (ties merged).

    Two voices of a part can hold the same pitch tied at the same moment (a unison); each open tie is kept,
    so one does not hide the other."""
    waiting = open_ties.setdefault(n.pitch, [])
    j = next((j for j in reversed(waiting) if notes[j].onset + notes[j].dur == n.onset), None)
    if tie in ("stop", "continue") and j is not None:
        waiting.remove(j)
        old = notes[j]
        notes[j] = Note(old.part, old.onset, old.pitch, old.dur + n.dur, old.vel)
    else:
        notes.append(n)
        j = len(notes) - 1
    if tie in ("start", "continue"):
        waiting.append(j)


def _grace_kind(d: Any, lost: Counter) -> int:
    """The Grace token value (1-based) of a grace note's duration: its notated value and slash."""
    slash = d.slash is not False
    if d.type not in GRACE_TYPES:
        lost["grace_notation"] += 1
    value = d.type if d.type in GRACE_TYPES else "eighth"
    return GRACE_KINDS.index((value, slash)) + 1


def _bar_grid(vocab: ScoreVocab, parts: list, end: int) -> list[Bar]:
    """Bar grid from the measures of the part that has the most, extended by bars of the last meter up
    to `end`, so every note fits (a final long note longer than its bar, or a part whose measures
    drift from the others' in a badly encoded file, then rings into an added bar, not past the end)."""
    from music21 import stream

    # the part with the most measures; among several, the bar lines most parts agree on, then the most
    # regular ones (a part with a badly encoded, overfull measure would shift every bar line after it)
    per_part = [list(p.getElementsByClass(stream.Measure)) for p in parts]
    most = max(map(len, per_part))
    candidates = [ms for ms in per_part if len(ms) == most]
    lines = [tuple(m.offset for m in ms) for ms in candidates]
    votes = Counter(lines)

    def irregular(at: tuple) -> int:
        lengths = Counter(b - a for a, b in zip(at, at[1:]))
        return sum(lengths.values()) - max(lengths.values(), default=0)

    measures = max(zip(candidates, lines), key=lambda c: (votes[c[1]], -irregular(c[1])))[0]
    bars: list[Bar] = []
    ts, key = (4, 4), 0
    q = Fraction(vocab.ppq)
    for i, m in enumerate(measures):
        if m.timeSignature is not None:
            ts = (m.timeSignature.numerator, m.timeSignature.denominator)
        if m.keySignature is not None:
            key = max(KEY_RANGE.start, min(KEY_RANGE.stop - 1, m.keySignature.sharps))
        start = Fraction(m.offset) * q
        if i + 1 < len(measures):
            length = Fraction(measures[i + 1].offset) * q - start
        else:
            length = Fraction(m.duration.quarterLength or m.barDuration.quarterLength) * q
        if start.denominator != 1 or length.denominator != 1:
            raise ValueError(f"bar {m.number} starts or ends off the {vocab.ppq}-per-quarter grid")
        if bars and bars[-1].start + bars[-1].length != start:
            raise ValueError(f"bar {m.number} does not start where the previous bar ends")
        if length <= 0:
            continue
        if ts not in vocab.ts_index:
            raise ValueError(f"time signature {ts[0]}/{ts[1]} is not supported")
        if length > vocab.max_bar:
            raise ValueError(f"bar {m.number} is longer than {vocab.max_bar_quarters} quarter notes")
        bars.append(Bar(int(start), int(length), ts, key))
    if not bars:
        bars.append(Bar(0, vocab.ts_steps(ts), ts, key))
    if bars[0].start != 0:
        raise ValueError("the first bar does not start at 0")
    while bars[-1].start + bars[-1].length < end:
        b = bars[-1]
        bars.append(Bar(b.start + b.length, vocab.ts_steps(b.ts), b.ts, b.key, b.tempo))
    return bars


def _notes_with_offsets(part: Any) -> Iterator[tuple[Fraction, Any]]:
    """(absolute offset, note or chord) for a part, looking inside measures and voices without flattening.

    Reads `elements` and `elementOffset` directly: iterating streams sets active sites, which costs
    more than the rest of encoding.
    """
    from music21 import stream

    def walk(container: Any, base: Fraction) -> Iterator[tuple[Fraction, Any]]:
        for el in container.elements:
            if isinstance(el, stream.Stream):
                yield from walk(el, base + Fraction(container.elementOffset(el)))
            elif "NotRest" in el.classSet and "Harmony" not in el.classSet:  # chord symbols are no notes
                yield base + Fraction(container.elementOffset(el)), el

    yield from walk(part, Fraction(0))
