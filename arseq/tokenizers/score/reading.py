"""Reading music21 scores into events: notes on the grid (ties merged), bars, meters, keys and tempi."""
from __future__ import annotations

import bisect
from fractions import Fraction
from typing import Any, Iterator

from arseq.tokenizers.score.events import Bar, Events, Note, clip_to_last_bar
from arseq.tokenizers.score.vocab import KEY_RANGE, ScoreVocab


def read_score(vocab: ScoreVocab, score: Any) -> Events:
    """Notes (ties merged), bars, meters, keys and tempi of a music21 score, on the grid of `vocab`.

    Raises ValueError with a one-line reason for what this tokenizer cannot represent.
    """
    from music21 import stream, tempo as m21tempo

    if isinstance(score, stream.Opus):
        if not score.scores:
            raise ValueError("empty score")
        score = score.scores[0]
    parts = list(score.parts) if isinstance(score, stream.Score) else [score]
    parts = [p for p in parts if p.recurse().notesAndRests.first() is not None] or parts
    if len(parts) > vocab.max_parts:
        raise ValueError(f"{len(parts)} parts; at most {vocab.max_parts} are supported")
    q = Fraction(vocab.ppq)
    quantized = dropped = unpitched = 0

    def steps(ql: Any) -> tuple[int, bool]:
        x = Fraction(ql) * q
        return round(x), x.denominator == 1

    notes: list[Note] = []
    for pi, part in enumerate(parts):
        open_ties: dict[int, int] = {}  # pitch -> index in notes of a tied note still open
        for off, el in _notes_with_offsets(part):
            if el.duration.isGrace or el.duration.quarterLength == 0:
                dropped += 1
                continue
            pitches = getattr(el, "pitches", ())
            if not pitches:
                unpitched += 1
                continue
            onset, on_grid = steps(off)
            dur, dur_ok = steps(el.duration.quarterLength)
            subs = el.notes if el.isChord else [el]
            vel = (el.volume.velocity or 64) if vocab.velocity else 64
            for sub, p in zip(subs, pitches):
                midi = round(p.ps)
                exact = on_grid and dur_ok and midi == p.ps and 0 <= midi <= 127
                midi = min(127, max(0, midi))
                tie = sub.tie.type if sub.tie is not None else (el.tie.type if el.tie is not None else None)
                j = open_ties.pop(midi, None)
                if tie in ("stop", "continue") and j is not None and notes[j].onset + notes[j].dur == onset:
                    n = notes[j]
                    notes[j] = Note(n.part, n.onset, n.pitch, n.dur + dur, n.vel)
                    if tie == "continue":
                        open_ties[midi] = j
                else:
                    notes.append(Note(pi, onset, midi, max(1, dur), int(vel)))
                    if tie in ("start", "continue"):
                        open_ties[midi] = len(notes) - 1
                quantized += not exact
    if not notes:
        raise ValueError("percussion only (no pitched notes)" if unpitched else "empty score (no notes)")
    too_long = sum(n.dur > vocab.max_dur for n in notes)
    notes = [Note(n.part, n.onset, n.pitch, min(n.dur, vocab.max_dur), n.vel) for n in notes]
    bars = _bar_grid(vocab, parts, max(n.onset for n in notes))
    notes, clipped = clip_to_last_bar(notes, bars)
    marks = score.recurse().getElementsByClass(m21tempo.MetronomeMark)
    tempi = [(steps(el.getOffsetInHierarchy(score))[0], el.getQuarterBPM()) for el in marks]
    for at, bpm in tempi:
        if bpm is None or not 10 <= bpm <= 1000:
            raise ValueError(f"absurd tempo {bpm} bpm")
    if vocab.tempo and tempi:
        starts = [b.start for b in bars]
        for at, bpm in sorted(tempi):
            i = max(0, bisect.bisect_right(starts, at) - 1)
            for b in bars[i:]:
                b.tempo = bpm
    return Events(bars, notes, len(parts), quantized + too_long + clipped, dropped)

def _bar_grid(vocab: ScoreVocab, parts: list, last_onset: int) -> list[Bar]:
    """Bar grid from the measures of the part that has the most, extended to cover every note."""
    from music21 import stream

    measures = max((list(p.getElementsByClass(stream.Measure)) for p in parts), key=len)
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
    while bars[-1].start + bars[-1].length <= last_onset:
        b = bars[-1]
        bars.append(Bar(b.start + b.length, vocab.ts_steps(b.ts), b.ts, b.key, b.tempo))
    return bars

def _notes_with_offsets(part: Any) -> Iterator[tuple[Fraction, Any]]:
    """(absolute offset, note or chord) for a part, looking inside measures and voices without flattening.

    Reads `elements` and `elementOffset` directly: iterating streams sets active sites, which costs
    more than the rest of encoding.
    """
    from music21 import stream

    def walk(container: Any, base: Fraction):
        for el in container.elements:
            if isinstance(el, stream.Stream):
                yield from walk(el, base + Fraction(container.elementOffset(el)))
            elif "NotRest" in el.classSet:
                yield base + Fraction(container.elementOffset(el)), el

    yield from walk(part, Fraction(0))
