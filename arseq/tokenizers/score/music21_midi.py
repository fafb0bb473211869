"""music21's MIDI import without its notation: the reference (`midi_reader: music21`) that the fast MIDI
path (`midi_reading`) is checked against.

music21's `converter.parse` of a MIDI file does two things. It reads what the file says: it pairs note-ons
with note-offs, gathers notes that start and end together into chords and quantizes onsets and durations
(here on the tokenizer's grid). Then it writes notation: measures, voices, ties and rests, the last steps of
`midi.translate.midiTrackToStream`. Tokens need none of that notation (reading merges the ties again), and
it moves notes in time where a part needs voices around a note held over bar lines: a chord's tied second
half resumes 1.5 quarters late (bwv248.23-2), the notes after a note that rings for 120 quarters move from
quarter 80 to 196 (monteverdi/madrigal.3.11), and some files get a measure longer than the tokenizer's 16
quarters. So the reference runs music21's import up to quantizing, into parts whose notation steps do
nothing, and lays bars from the file's time and key signatures by the rule the fast path uses
(`midi_reading.meter_bars`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from arseq.tokenizers.score.events import Events
from arseq.tokenizers.score.midi_reading import meter_bars
from arseq.tokenizers.score.reading import read_score
from arseq.tokenizers.score.vocab import ScoreVocab


def read_midi_music21(vocab: ScoreVocab, path: Path) -> Events:
    """Events of one MIDI file as music21 reads it, on the grid of `vocab`; ValueError with a one-line
    reason for what the tokenizer cannot represent (music21's own exceptions for a damaged file)."""
    from music21 import midi, stream
    from music21.midi.translate import midiTrackToStream

    mf = midi.MidiFile()
    mf.open(str(path))
    try:
        mf.read()
    finally:
        mf.close()
    if not mf.tracks:
        raise ValueError("no tracks")
    # as `midi.translate.midiTracksToStreams`: a part per track with notes, the other tracks' time and key
    # signatures and tempi gathered in a conductor part that every part gets a copy of
    score, conductor, unnotated = stream.Score(), stream.Part(), _unnotated_part()
    first = next((mt for mt in mf.tracks if mt.hasNotes()), None)
    for mt in mf.tracks:
        part = unnotated() if mt.hasNotes() else conductor
        if part is not conductor:
            score.insert(0, part)
        midiTrackToStream(
            mt,
            ticksPerQuarter=mf.ticksPerQuarterNote,
            quarterLengthDivisors=(vocab.ppq,),
            inputM21=part,
            conductorPart=conductor,
            isFirst=mt is first,
        )
    # every part holds copies of the conductor's signatures and its own track's: the file's, all of them
    marks = [(_step(el.offset, vocab.ppq), el) for p in score.parts for el in p.getElementsByClass(("TimeSignature", "KeySignature"))]
    meters = [(at, (el.numerator, el.denominator)) for at, el in marks if "TimeSignature" in el.classSet]
    keys = [(at, el.sharps) for at, el in marks if "KeySignature" in el.classSet]
    return read_score(vocab, score, bar_grid=lambda parts, end: meter_bars(vocab, meters, keys, end))


def _step(offset: Any, ppq: int) -> int:
    """The grid step of a music21 offset that its import has quantized (every element's, signatures too)."""
    return round(float(offset) * ppq)


@functools.cache
def _unnotated_part() -> type:
    """A music21 Part whose notation steps (measures, ties, rests) do nothing: `midiTrackToStream` calls
    them last, so the part keeps the notes as read and quantized. (A class made on first use: music21 is
    imported only by the readers that need it.)"""
    from music21 import stream

    class Unnotated(stream.Part):
        def makeMeasures(self, *args: Any, **kwargs: Any) -> None:
            return None

        def makeTies(self, *args: Any, **kwargs: Any) -> None:
            return None

        def makeRests(self, *args: Any, **kwargs: Any) -> None:
            return None

    return Unnotated
