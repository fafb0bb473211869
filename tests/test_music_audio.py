"""The WAV rendering of music, checked by measurement: its length is the MIDI file's duration and its
spectrum peaks at the notes' frequencies."""

from __future__ import annotations

import io
import wave

import numpy as np

from arseq.modalities.music.audio import duration_seconds, midi_hz, render, render_wav
from arseq.tokenizers.score import Events, ScoreTokenizer
from arseq.tokenizers.score.events import Bar, Note

SR = 22050


def piece(ppq: int) -> Events:
    """Three 4/4 bars: A4 alone at 90 bpm, then C5 + E5 at 90, then G3 at 150 (a tempo change)."""
    bar = 4 * ppq
    bars = [Bar(0, bar, (4, 4), 0, 90.0), Bar(bar, bar, (4, 4), 0, None), Bar(2 * bar, bar, (4, 4), 0, 150.0)]
    notes = [Note(0, 0, 69, bar), Note(0, bar, 72, bar), Note(1, bar, 76, bar), Note(0, 2 * bar, 55, bar)]
    return Events(bars, notes, num_parts=2)


def peaks(x: np.ndarray, k: int) -> list[float]:
    """The k strongest spectral peaks (Hz), at least 20 Hz apart."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    found: list[float] = []
    for i in np.argsort(spec)[::-1]:
        if all(abs(freqs[i] - f) > 20 for f in found):
            found.append(float(freqs[i]))
        if len(found) == k:
            break
    return found


def test_length_is_the_pieces_duration_and_the_midi_files():
    tok = ScoreTokenizer()
    ev = piece(tok.ppq)
    want = 2 * 4 * 60 / 90 + 4 * 60 / 150
    assert abs(duration_seconds(ev, tok.ppq) - want) < 1e-9
    with wave.open(io.BytesIO(render_wav(ev, tok.ppq, SR))) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        assert abs(w.getnframes() / SR - want) < 1.5 / SR


def test_midi_file_lasts_as_long(tmp_path):
    from music21 import converter

    tok = ScoreTokenizer()
    ev = piece(tok.ppq)
    path = tmp_path / "p.mid"
    tok.to_score(ev).write("midi", fp=str(path))
    timed = converter.parse(path).flatten().secondsMap  # with the file's tempo marks
    seconds = max(e["offsetSeconds"] + e["durationSeconds"] for e in timed if getattr(e["element"], "isNote", False))
    assert abs(seconds - duration_seconds(ev, tok.ppq)) < 0.02


def test_spectrum_peaks_at_the_notes():
    tok = ScoreTokenizer()
    ev = piece(tok.ppq)
    x = render(ev, tok.ppq, SR)
    bar1, bar2 = 4 * 60 / 90, 8 * 60 / 90
    a = x[int(0.05 * SR) : int((bar1 - 0.05) * SR)]
    chord = x[int((bar1 + 0.05) * SR) : int((bar2 - 0.05) * SR)]
    low = x[int((bar2 + 0.05) * SR) :]
    assert abs(peaks(a, 1)[0] - 440.0) < 2
    assert sorted(round(f) for f in peaks(chord, 2)) == [round(midi_hz(72)), round(midi_hz(76))]
    assert abs(peaks(low, 1)[0] - midi_hz(55)) < 2
    assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.5


def test_grace_notes_and_an_empty_piece():
    ppq = 4
    ev = Events([Bar(0, 16, (4, 4), 0)], [Note(0, 4, 62, 0, grace=1), Note(0, 4, 60, 4)], 1)
    x = render(ev, ppq, SR)
    assert len(x) == SR * 2 and np.abs(x[: int(0.4 * SR)]).max() == 0  # 4/4 at 120 bpm: 2 s; silence before the grace note
    assert len(render(Events([], [], 0), ppq, SR)) == 0
