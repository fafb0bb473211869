"""Reading MIDI files into the same `Events` as music21's path (`reading.read_score`), ~100x faster.

Why not music21: it builds a full notated score (chords, voices, measures, ties, rests) for every file,
~30 ms for a small chorale, while the tokenizer only needs notes on a grid, bars, meters, keys and tempi.
The file's events come from `midi_file` (a scan of the bytes, ~0.3 ms for a chorale). Every rule below
mirrors what music21's MIDI import does when it quantizes to the tokenizer's grid (`quarterLengthDivisors`
of `(ppq,)`, as `midi_reader: music21` reads), so the two paths give the same events (and tokens) for the
same file (tests/test_music_midi_path.py):

- a note ends at the first note-off of its pitch and channel after it in its track (`midi_file._pair`);
- a part per MIDI track that has notes (music21 drops the conductor track and empty tracks); notes on
  channel 10 are dropped as unpitched (music21 makes `Unpitched` of them), their track keeps its part;
- onsets and durations go to the nearest grid step, halfway to the earlier one as music21 computes it in
  floating point (`_steps`), and a note is at least one step long (music21's `quantize` never makes a note
  of length 0); one moved is counted as `off_grid`; a note whose note-off is at its note-on's tick is a
  grace note (music21's import gives it a `GraceDuration`, which its reading writes as a slashed quarter);
- tempo marks where the file has them (none where it has none), bpm rounded to two decimals like
  music21's `midiEventToTempo`;
- bars of the time signature in force at each bar's start (4/4 without one) from tick 0, as many as the
  notes need: a time signature mid-bar takes effect at the next bar line (music21 writes them where a
  score's bar was shorter than its meter); the key signature of the bar line where one stands, one mid-bar
  ignored (`meter_bars`, which the reference lays its bars with too).
"""

from __future__ import annotations

import bisect
from collections import Counter
from pathlib import Path

import numpy as np

from arseq.tokenizers.score.events import Bar, Events, Note, clip_to_last_bar
from arseq.tokenizers.score.midi_file import MidiContent, read_midi_file
from arseq.tokenizers.score.vocab import GRACE_KINDS, KEY_RANGE, ScoreVocab

ZERO_LENGTH_GRACE = GRACE_KINDS.index(("quarter", True)) + 1


def read_midi(vocab: ScoreVocab, path: Path, max_quarters: int | None = None, max_notes: int = 2_000_000) -> Events:
    """Events of one MIDI file on the grid of `vocab`; ValueError with a one-line reason for a file that is
    not MIDI or is damaged, for what this tokenizer cannot represent, or for a file longer than
    `max_quarters` or with more note-ons and note-offs than `max_notes` notes have (checked as it reads)."""
    content = read_midi_file(path.read_bytes(), 2 * max_notes)  # a note is a note-on and a note-off
    tpq = content.ticks_per_quarter
    if max_quarters is not None and content.end / tpq > max_quarters:
        raise ValueError(f"lasts {content.end:,} ticks ({content.end / tpq:,.0f} quarter notes), more than {max_quarters:,}")
    return content_events(vocab, content)


def content_events(vocab: ScoreVocab, content: MidiContent) -> Events:
    """Events of a parsed MIDI file; see the module docstring for the rules."""
    tpq = content.ticks_per_quarter
    if len(content.tracks) > vocab.max_parts:
        raise ValueError(f"{len(content.tracks)} parts; at most {vocab.max_parts} are supported")
    lost: Counter[str] = Counter()
    notes: list[Note] = []
    for pi, track in enumerate(content.tracks):
        pitched = track.channel != 9  # MIDI channel 10 is percussion
        lost["unpitched"] += len(pitched) - int(pitched.sum())
        start, ticks = track.start[pitched], track.end[pitched] - track.start[pitched]
        onset, on_grid = _steps(start, tpq, vocab.ppq)
        dur, dur_grid = _steps(ticks, tpq, vocab.ppq)
        lost["off_grid"] += int((~(on_grid & dur_grid) | ((dur == 0) & (ticks > 0))).sum())
        # a note-off at its note-on's tick: music21 makes a grace note (a slashed quarter) of it
        grace = np.where(ticks == 0, ZERO_LENGTH_GRACE if vocab.grace else -1, 0)
        lost["grace_dropped"] += int((grace < 0).sum())
        dur = np.where(grace == 0, np.maximum(dur, 1), 0)
        vel = track.velocity[pitched] if vocab.velocity else np.full(len(onset), 64)
        notes += [
            Note(pi, o, p, d, v, g)
            for o, p, d, v, g in zip(onset.tolist(), track.pitch[pitched].tolist(), dur.tolist(), vel.tolist(), grace.tolist())
            if g >= 0
        ]
    if not notes:
        raise ValueError("percussion only (no pitched notes)" if lost["unpitched"] else "empty score (no notes)")
    end = max(n.onset + n.dur for n in notes)
    bars = _bars(vocab, content, tpq, end)
    notes, lost["past_last_bar"] = clip_to_last_bar(notes, bars)
    _set_tempi(vocab, content, tpq, bars)
    lost = Counter({k: v for k, v in lost.items() if v})
    moved = ("off_grid", "microtone", "pitch_range", "past_last_bar", "grace_notation")
    dropped = ("grace_dropped", "zero_duration", "unpitched")
    return Events(bars, notes, len(content.tracks), sum(lost[k] for k in moved), sum(lost[k] for k in dropped), lost=dict(lost))


def _steps(ticks: np.ndarray, tpq: int, ppq: int) -> tuple[np.ndarray, np.ndarray]:
    """(nearest grid steps, exactly on the grid) of tick values. The rounding is music21's
    (`common.nearestMultiple`, in floating point, on `ticks / tpq` quarters): halfway between two steps goes
    to the earlier one unless float error puts it past halfway (66.3125 quarters: step 1592 of 24 a
    quarter, not 1591), so the reference and this path round every value alike."""
    quarters, unit = ticks / tpq, 1.0 / ppq
    low = np.floor(quarters / unit)
    steps = np.where(quarters <= unit * low + unit / 2.0, low, low + 1).astype(np.int64)
    return steps, ticks * ppq % tpq == 0


def _bars(vocab: ScoreVocab, content: MidiContent, tpq: int, end: int) -> list[Bar]:
    """Bars of the file's time and key signatures (ticks put on the grid) until `end` (grid steps)."""
    meters = [(_step(at, tpq, vocab.ppq), (n, d)) for at, n, d in content.time_signatures]
    keys = [(_step(at, tpq, vocab.ppq), k) for at, k in content.key_signatures]
    return meter_bars(vocab, meters, keys, end)


def meter_bars(vocab: ScoreVocab, meters: list[tuple[int, tuple[int, int]]], keys: list[tuple[int, int]], end: int) -> list[Bar]:
    """Bars from step 0 under the time signatures in force (`meters`: (step, (numerator, denominator))),
    until `end` (grid steps) is covered; each bar carries the key signature (`keys`: (step, sharps)) that
    stands on its bar line. One mid-bar waits for the next bar line (a meter) or is ignored (a key)."""
    meters = sorted(meters)
    keys = sorted((at, max(KEY_RANGE.start, min(KEY_RANGE.stop - 1, k))) for at, k in keys)
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


def _set_tempi(vocab: ScoreVocab, content: MidiContent, tpq: int, bars: list[Bar]) -> None:
    """Each bar's tempo: the last tempo mark at or before its start (music21 rounds bpm to 2 decimals)."""
    marks = [(_step(at, tpq, vocab.ppq), round(60_000_000 / mspq, 2)) for at, mspq in content.tempos if mspq > 0]
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
    """The nearest grid step of a tick, rounded as `_steps` rounds."""
    return int(_steps(np.array([tick], dtype=np.int64), tpq, ppq)[0][0])
