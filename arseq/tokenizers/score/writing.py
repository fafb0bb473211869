"""Writing events as a music21 score: measures, voices, notatable durations, ties, enharmonic spelling."""

from __future__ import annotations

import bisect
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Any

from arseq.tokenizers.score.events import Bar, Events, Note
from arseq.tokenizers.score.vocab import GRACE_KINDS, ScoreVocab

# Default General MIDI programs by part index: distinct, so parts stay apart in a MIDI round trip,
# and none of them is a transposing instrument in music21 (that would shift written pitches).
PART_PROGRAMS = (40, 41, 42, 70, 68, 73, 19, 0, 24, 32, 56, 57, 60, 58, 46, 11)
VOICE_NAMES = ("Soprano", "Alto", "Tenor", "Bass")


def to_score(vocab: ScoreVocab, ev: Events) -> Any:
    """A music21 Score with one Part per part index (parts kept apart by distinct MIDI programs)."""
    from music21 import stream

    score = stream.Score()
    num_parts = max(1, ev.num_parts)
    bars = ev.bars or [Bar(0, vocab.ts_steps((4, 4)), (4, 4), 0)]
    by_part: list[list[Note]] = [[] for _ in range(num_parts)]
    graces: list[list[list[Note]]] = [[[] for _ in bars] for _ in range(num_parts)]
    starts = [b.start for b in bars]
    for n in ev.notes:
        if n.grace:  # in the bar of its onset, in the order they are played
            graces[n.part][max(0, bisect.bisect_right(starts, n.onset) - 1)].append(n)
        else:
            by_part[n.part].append(n)
    for pi in range(num_parts):
        score.insert(0, _part(vocab, pi, num_parts, bars, by_part[pi], graces[pi]))
    return score


def _part(vocab: ScoreVocab, pi: int, num_parts: int, bars: list[Bar], notes: list[Note], graces: list[list[Note]]) -> Any:
    """Part `pi`: its instrument, then a measure per bar holding its notes (and its grace notes, per bar)."""
    from music21 import instrument, stream

    part = stream.Part(id=f"P{pi + 1}")
    inst = instrument.Instrument()
    inst.midiProgram = PART_PROGRAMS[pi % len(PART_PROGRAMS)]
    inst.partName = inst.instrumentName = VOICE_NAMES[pi] if num_parts == 4 else f"Part {pi + 1}"
    part.partName = inst.partName
    part.insert(0, inst)
    for bi, segment in enumerate(_split_at_bars(notes, bars)):
        m = _measure(vocab, bars, bi, tempo_marks=pi == 0)
        _fill(vocab, m, bars[bi], segment, graces[bi])
        part.insert(Fraction(bars[bi].start, vocab.ppq), m)
    return part


def _measure(vocab: ScoreVocab, bars: list[Bar], bi: int, tempo_marks: bool) -> Any:
    """An empty measure for bar `bi`: its number (a short first bar is a pickup, 0), the signatures and tempo
    where they change, and padding where the bar is shorter than its meter."""
    from music21 import key, meter, stream, tempo

    bar, prev = bars[bi], bars[bi - 1] if bi > 0 else None
    m = stream.Measure(number=bi + (0 if bars[0].length < vocab.ts_steps(bars[0].ts) else 1))
    if prev is None or bar.ts != prev.ts:
        m.timeSignature = meter.TimeSignature(f"{bar.ts[0]}/{bar.ts[1]}")
    if prev is None or bar.key != prev.key:
        m.keySignature = key.KeySignature(bar.key)
    if tempo_marks and bar.tempo is not None and (prev is None or bar.tempo != prev.tempo):
        m.insert(0, tempo.MetronomeMark(number=bar.tempo))
    nominal = vocab.ts_steps(bar.ts)
    if bar.length < nominal:
        pad = Fraction(nominal - bar.length, vocab.ppq)
        if bi == 0:
            m.paddingLeft = pad
        else:
            m.paddingRight = pad
    return m


def _fill(vocab: ScoreVocab, m: Any, bar: Bar, segment: list[tuple[int, int, int, str | None, int]], graces: list[Note]) -> None:
    """A bar's notes in voices (rests between them, durations split into notatable tied pieces), and its grace
    notes. A grace note goes before its principal note; one with none at its onset goes in a voice of its
    own, whose rests are split there (MusicXML places a grace note only between elements)."""
    from music21 import chord, note, stream, tie

    voices = _assign_voices(segment)
    principal = {pos for voice in voices for pos, _, _ in voice}
    lone = sorted({g.onset - bar.start for g in graces} - principal)
    if lone or not voices:
        voices.append([])
    containers = [m] if len(voices) == 1 else [stream.Voice(id=str(v + 1)) for v in range(len(voices))]
    for box, voice in zip(containers, voices):
        end = 0
        for pos, dur, group in voice:
            _rests(note, box, vocab.ppq, end, pos)
            pieces = _notatable(vocab.ppq, dur)
            at = pos
            for i, piece in enumerate(pieces):
                ties = [(p, _tie_piece(t, i, len(pieces)), v) for p, t, v in group]
                box.coreInsert(Fraction(at, vocab.ppq), _make_note(note, chord, tie, ties, bar.key, Fraction(piece, vocab.ppq)))
                at += piece
            end = pos + dur
        for pos in lone if voice is voices[-1] and not voice else ():
            _rests(note, box, vocab.ppq, end, pos)
            end = pos
        _rests(note, box, vocab.ppq, end, bar.length)
    for g in graces:
        pos = g.onset - bar.start
        box = next((b for b, v in zip(containers, voices) if any(p == pos for p, _, _ in v)), containers[-1])
        box.coreInsert(Fraction(pos, vocab.ppq), _grace_note(note, g, bar.key))
    for box in containers:
        box.coreElementsChanged()
    if len(voices) > 1:
        for v in containers:
            m.insert(0, v)


def write_musicxml(score: Any, path: str | Path) -> None:
    """Write a `to_score` score as is: music21's own notation pass would re-bar long bars."""
    score.write("musicxml", fp=str(path), makeNotation=False)


@cache
def _note_values(ppq: int) -> tuple[int, ...]:
    """Grid lengths, longest first, that print as one plain, dotted or triplet note (a dotted double whole at most)."""
    values = {Fraction(8, 2**i) * f * ppq for i in range(8) for f in (1, Fraction(3, 2), Fraction(2, 3))}
    return tuple(sorted((int(v) for v in values if v.denominator == 1), reverse=True))


def _notatable(ppq: int, steps: int) -> list[int]:
    """Split a duration into values that each print as one (possibly dotted or triplet) note.

    music21 cannot always write "complex" durations (say 6 2/3 quarters) to MusicXML faithfully;
    tied single values always can, and reading merges the ties back.
    """
    out = []
    while steps > 0:
        piece = next((v for v in _note_values(ppq) if v <= steps), steps)
        out.append(piece)
        steps -= piece
    return out


def _rests(note: Any, box: Any, ppq: int, start: int, end: int) -> None:
    for piece in _notatable(ppq, end - start):
        box.coreInsert(Fraction(start, ppq), note.Rest(quarterLength=Fraction(piece, ppq)))
        start += piece


def _split_at_bars(notes: list[Note], bars: list[Bar]) -> list[list[tuple[int, int, int, str | None, int]]]:
    """Per bar: (bar-relative onset, duration, pitch, tie type, velocity) pieces of notes, split at bar lines."""
    out: list[list[tuple[int, int, int, str | None, int]]] = [[] for _ in bars]
    starts = [b.start for b in bars]
    for n in notes:
        i = bisect.bisect_right(starts, n.onset) - 1
        at, left = n.onset, n.dur
        first = True
        while left > 0 and i < len(bars):
            bar_end = bars[i].start + bars[i].length
            piece = min(left, bar_end - at)
            left -= piece
            tie = None if first and not left else "start" if first else "stop" if not left else "continue"
            out[i].append((at - bars[i].start, piece, n.pitch, tie, n.vel))
            at, first, i = at + piece, False, i + 1
    return out


def _assign_voices(pieces: list[tuple[int, int, int, str | None, int]]) -> list[list[tuple[int, int, list]]]:
    """Group same-onset same-duration pieces into chords, then lay them into as few non-overlapping voices as possible."""
    groups: dict[tuple[int, int], list] = {}
    for pos, dur, pitch, tie, vel in sorted(pieces, key=lambda x: x[:3]):
        groups.setdefault((pos, dur), []).append((pitch, tie, vel))
    voices: list[list[tuple[int, int, list]]] = []
    for (pos, dur), group in sorted(groups.items()):
        for v in voices:
            if v[-1][0] + v[-1][1] <= pos:
                v.append((pos, dur, group))
                break
        else:
            voices.append([(pos, dur, group)])
    return voices


def _tie_piece(tie_type: str | None, i: int, n: int) -> str | None:
    """Tie of piece i of n that a note (itself tied `tie_type`) is written as."""
    before = i > 0 or tie_type in ("stop", "continue")
    after = i < n - 1 or tie_type in ("start", "continue")
    return "continue" if before and after else "start" if after else "stop" if before else None


def _grace_note(note: Any, g: Note, sharps: int) -> Any:
    """A music21 grace note (zero length; sorts before the principal note at its offset)."""
    from music21 import duration

    value, slash = GRACE_KINDS[g.grace - 1]
    n = _note_at(note, g.pitch)
    n.duration = duration.GraceDuration(value)
    n.duration.slash = slash
    _spell(n, sharps)
    if g.vel != 64:
        n.volume.velocity = g.vel
    return n


def _note_at(note: Any, midi: int, **kwargs: Any) -> Any:
    """A Note of MIDI pitch `midi`: music21 reads a bare int below 12 as a pitch class in octave 4."""
    from music21 import pitch

    return note.Note(pitch.Pitch(midi=midi), **kwargs)


def _spell(n: Any, sharps: int) -> None:
    """Flats in flat keys: music21 spells black keys as sharps."""
    if sharps < 0 and n.pitch.accidental is not None and n.pitch.accidental.alter > 0:
        n.pitch = n.pitch.getEnharmonic()


def _make_note(note: Any, chord: Any, tie: Any, group: list, sharps: int, ql: Fraction) -> Any:
    def one(pitch: int, tie_type: str | None, vel: int) -> Any:
        n = _note_at(note, pitch, quarterLength=ql)
        _spell(n, sharps)
        if vel != 64:
            n.volume.velocity = vel
        if tie_type:
            n.tie = tie.Tie(tie_type)
        return n

    notes = [one(*g) for g in group]
    return notes[0] if len(notes) == 1 else chord.Chord(notes, quarterLength=ql)
