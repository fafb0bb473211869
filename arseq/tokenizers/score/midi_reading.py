"""Reading MIDI files with symusic (C++) into the same `Events` as music21's path (`reading.read_score`).

Why not music21: it builds a full notated score (chords, voices, measures, ties, rests) for every file,
~30 ms for a small chorale, while the tokenizer only needs notes on a grid, bars, meters, keys and tempi.
symusic parses the same file in ~50 us. Every rule below mirrors what music21's MIDI import does, so the
two paths give the same events (and tokens) for the same file (tests/test_music_midi_path.py):

- a note ends at the first note-off of its pitch after it (`_first_off`);
- a part per MIDI track that has notes (music21 drops the conductor track and empty tracks); drum tracks
  (channel 10) keep their part, their notes are dropped as unpitched;
- tempo marks where the file has them (none where it has none), bpm rounded to two decimals like
  music21's `midiEventToTempo`;
- bars of the time signature in force at each bar's start (4/4 without one) from tick 0, as many as the
  notes need: a time signature mid-bar takes effect at the next bar line (music21 writes them where a
  score's bar was shorter than its meter, and its `makeMeasures` reads them so);
- the key signature of the bar line where one stands; one mid-bar is ignored (music21 places it inside
  the measure, where `Measure.keySignature`, which reading uses, does not see it).

One difference by design: an onset or duration off the tokenizer's grid is moved to the nearest grid
step here and counted as `off_grid`, where music21 first snaps every value to 16ths and eighth triplets
(so a 32nd note survives here and not there). On-grid files (what notation programs write) are equal.
"""

from __future__ import annotations

import bisect
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from arseq.tokenizers.score.events import Bar, Events, Note, clip_to_last_bar
from arseq.tokenizers.score.vocab import KEY_RANGE, ScoreVocab


def read_midi(vocab: ScoreVocab, path: Path, max_quarters: int | None = None, max_notes: int | None = None) -> Events:
    """Events of one MIDI file on the grid of `vocab`; ValueError with a one-line reason for what this
    tokenizer cannot represent or for a file longer than `max_quarters` or with more than `max_notes`
    notes (symusic's own errors on unreadable files are passed on as they are)."""
    import symusic

    score = symusic.Score(str(path), ttype="tick")
    tpq = max(1, int(score.ticks_per_quarter))
    if max_quarters is not None and score.end() / tpq > max_quarters:
        raise ValueError(f"lasts {score.end():,} ticks ({score.end() / tpq:,.0f} quarter notes), more than {max_quarters:,}")
    if max_notes is not None and score.note_num() > max_notes:
        raise ValueError(f"more than {max_notes:,} notes")
    return score_events(vocab, score)


def score_events(vocab: ScoreVocab, score: Any) -> Events:
    """Events of a symusic `Score` (tick time); see the module docstring for the rules."""
    tpq = int(score.ticks_per_quarter)
    if tpq <= 0:
        raise ValueError("SMPTE (frame-based) MIDI timing is not supported")
    lost: Counter[str] = Counter()
    tracks = [t for t in score.tracks if t.note_num() > 0]
    if len(tracks) > vocab.max_parts:
        raise ValueError(f"{len(tracks)} parts; at most {vocab.max_parts} are supported")
    notes: list[Note] = []
    for pi, track in enumerate(tracks):
        arr = track.notes.numpy()
        if track.is_drum:
            lost["unpitched"] += len(arr["time"])
            continue
        onset, on_grid = _steps(arr["time"], tpq, vocab.ppq)
        dur, dur_grid = _steps(_first_off(arr["time"], arr["duration"], arr["pitch"]), tpq, vocab.ppq)
        lost["off_grid"] += int((~(on_grid & dur_grid)).sum())
        zero = dur == 0
        lost["zero_duration"] += int(zero.sum())
        vel = arr["velocity"].astype(np.int64) if vocab.velocity else np.full(len(onset), 64)
        pitch = arr["pitch"].astype(np.int64)
        keep = ~zero
        notes += [Note(pi, int(o), int(p), int(d), int(v)) for o, p, d, v in zip(onset[keep], pitch[keep], dur[keep], vel[keep])]
    if not notes:
        raise ValueError("percussion only (no pitched notes)" if lost["unpitched"] else "empty score (no notes)")
    end = max(n.onset + n.dur for n in notes)
    bars = _bars(vocab, score, tpq, end)
    notes, lost["past_last_bar"] = clip_to_last_bar(notes, bars)
    _set_tempi(vocab, score, tpq, bars)
    lost = Counter({k: v for k, v in lost.items() if v})
    moved = ("off_grid", "microtone", "pitch_range", "past_last_bar", "grace_notation")
    dropped = ("grace_dropped", "zero_duration", "unpitched")
    return Events(bars, notes, len(tracks), sum(lost[k] for k in moved), sum(lost[k] for k in dropped), lost=dict(lost))


def _first_off(start: np.ndarray, duration: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Durations (ticks) with each note ended by the first note-off of its pitch after its onset, as
    music21 pairs them. Where one pitch sounds twice at once (two voices in one track), symusic pairs
    note-ons and -offs first in, first out; music21 ends every such note at the next note-off, so the
    two paths would read different durations from the same bytes."""
    start, end = start.astype(np.int64), start.astype(np.int64) + duration.astype(np.int64)
    key = pitch.astype(np.int64) << 40
    ends = np.sort(key + end)
    i = np.searchsorted(ends, key + start, side="right")
    found = i < len(ends)
    nxt = np.where(found, ends[np.minimum(i, len(ends) - 1)], 0)
    same = found & (nxt >> 40 == key >> 40)
    return np.where(same, (nxt & ((1 << 40) - 1)) - start, duration)


def _steps(ticks: np.ndarray, tpq: int, ppq: int) -> tuple[np.ndarray, np.ndarray]:
    """(nearest grid steps, exactly on the grid) of tick values (integer arithmetic: no float rounding)."""
    t = ticks.astype(np.int64) * ppq
    steps = (2 * t + tpq) // (2 * tpq)  # round half up
    return steps, t % tpq == 0


def _bars(vocab: ScoreVocab, score: Any, tpq: int, end: int) -> list[Bar]:
    """Bars from tick 0 under the time signatures in force, until `end` (grid steps) is covered; each bar
    carries the key signature in force at its start."""
    meters = sorted((_step(ts.time, tpq, vocab.ppq), (int(ts.numerator), int(ts.denominator))) for ts in score.time_signatures)
    keys = sorted((_step(k.time, tpq, vocab.ppq), max(KEY_RANGE.start, min(KEY_RANGE.stop - 1, int(k.key)))) for k in score.key_signatures)
    bars: list[Bar] = []
    at, ts, key, mi, ki = 0, (4, 4), 0, 0, 0
    while at < end or not bars:
        while mi < len(meters) and meters[mi][0] <= at:
            ts, mi = meters[mi][1], mi + 1
        while ki < len(keys) and keys[ki][0] <= at:  # one on this bar line counts; mid-bar ones never do
            key, ki = (keys[ki][1] if keys[ki][0] == at else key), ki + 1
        if ts not in vocab.ts_index:
            raise ValueError(f"time signature {ts[0]}/{ts[1]} is not supported")
        bars.append(Bar(at, vocab.ts_steps(ts), ts, key))
        at += vocab.ts_steps(ts)
    return bars


def _set_tempi(vocab: ScoreVocab, score: Any, tpq: int, bars: list[Bar]) -> None:
    """Each bar's tempo: the last tempo mark at or before its start (music21 rounds bpm to 2 decimals)."""
    marks = [(_step(t.time, tpq, vocab.ppq), round(60_000_000 / t.mspq, 2)) for t in score.tempos if t.mspq > 0]
    for _, bpm in marks:
        if not 10 <= bpm <= 1000:
            raise ValueError(f"absurd tempo {bpm} bpm")
    if not vocab.tempo:
        return
    starts = [b.start for b in bars]
    for at, bpm in sorted(marks):
        for b in bars[max(0, bisect.bisect_right(starts, at) - 1) :]:
            b.tempo = bpm


def _step(tick: int, tpq: int, ppq: int) -> int:
    return (2 * int(tick) * ppq + tpq) // (2 * tpq)
