"""A WAV rendering of a piece for people to hear it: a small additive synthesiser in numpy (no sound font,
nothing downloaded).

Each note is a few harmonics of its equal-tempered frequency (A4 = 440 Hz) under an attack-decay-release
envelope; parts are mixed and the mix normalised. Time follows the piece's bars: each bar lasts its grid
length at the tempo in force (the bar's own, else the last one given, else 120 quarter notes a minute,
music21's default and so the MIDI file's), so the WAV lasts exactly as long as the MIDI file arseq writes.
"""

from __future__ import annotations

import io
import wave
from typing import Sequence

import numpy as np

from arseq.tokenizers.score.events import Bar, Events

DEFAULT_BPM = 120.0  # quarter notes a minute where a piece names no tempo (music21's and MIDI's default)
HARMONICS = (1.0, 0.35, 0.15, 0.06)  # amplitude of the fundamental and its overtones: the fundamental dominates
ATTACK_S, RELEASE_S = 0.01, 0.03
GRACE_S = 0.06  # a grace note sounds this long, just before its principal note


def midi_hz(pitch: int | float) -> float:
    """The equal-tempered frequency of a MIDI pitch (69 = A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((float(pitch) - 69.0) / 12.0)


def step_times(bars: Sequence[Bar], ppq: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The seconds at which each bar starts, seconds per grid step in each bar, and the piece's duration."""
    if not bars:
        return np.zeros(1), np.full(1, 60.0 / DEFAULT_BPM / ppq), 0.0
    starts, per_step, t, bpm = [], [], 0.0, DEFAULT_BPM
    for bar in bars:
        bpm = bar.tempo if bar.tempo else bpm
        starts.append(t)
        per_step.append(60.0 / bpm / ppq)
        t += bar.length * per_step[-1]
    return np.asarray(starts), np.asarray(per_step), t


def duration_seconds(ev: Events, ppq: int) -> float:
    """How long the piece lasts: its bars at their tempi (the MIDI file's length)."""
    return step_times(ev.bars, ppq)[2]


def _seconds(step: int, bars: Sequence[Bar], starts: np.ndarray, per_step: np.ndarray) -> float:
    i = max(0, int(np.searchsorted([b.start for b in bars], step, side="right")) - 1) if bars else 0
    origin = bars[i].start if bars else 0
    return float(starts[i] + (step - origin) * per_step[i])


def render(ev: Events, ppq: int, sample_rate: int = 22050) -> np.ndarray:
    """The piece as mono float32 samples in [-1, 1], exactly `duration_seconds` long (notes ringing past the
    last bar line are cut there with a short fade)."""
    starts, per_step, total = step_times(ev.bars, ppq)
    if not ev.bars:  # nothing but notes: as long as they ring at the default tempo
        total = max((n.onset + n.dur for n in ev.notes), default=0) * per_step[0]
    length = int(round(total * sample_rate))
    mix = np.zeros(length, dtype=np.float64)
    for n in ev.notes:
        t0 = _seconds(n.onset, ev.bars, starts, per_step)
        t1 = _seconds(n.onset + n.dur, ev.bars, starts, per_step) if n.dur else t0 + GRACE_S
        if n.grace:
            t0, t1 = max(0.0, t0 - GRACE_S), t0
        i0, i1 = int(round(t0 * sample_rate)), min(length, int(round(t1 * sample_rate)))
        if i1 <= i0:
            continue
        t = np.arange(i1 - i0) / sample_rate
        f = midi_hz(n.pitch)
        tone = sum(a * np.sin(2 * np.pi * f * (k + 1) * t) for k, a in enumerate(HARMONICS) if f * (k + 1) < sample_rate / 2)
        env = np.minimum(1.0, t / ATTACK_S) * np.exp(-1.2 * t)  # a struck-string decay
        env *= np.clip((t[-1] - t) / RELEASE_S, 0.0, 1.0) if len(t) > 1 else 1.0
        mix[i0:i1] += (0.3 + 0.7 * n.vel / 127) * tone * env
    peak = float(np.abs(mix).max()) if length else 0.0
    return (mix * (0.8 / peak) if peak > 0 else mix).astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int = 22050) -> bytes:
    """16-bit PCM mono WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def render_wav(ev: Events, ppq: int, sample_rate: int = 22050) -> bytes:
    """The piece as a WAV file's bytes."""
    return wav_bytes(render(ev, ppq, sample_rate), sample_rate)
