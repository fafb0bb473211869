"""Scores played "by a person": the stand-in for recorded performances in tests and benchmarks.

No MAESTRO-style recordings ship with arseq or music21, so performances are made from scores with a fixed
seed: a tempo that drifts (rubato, a few percent, slower towards the end of each phrase), onsets jittered
by a few to tens of ms, durations shortened or held over (legato / staccato), and velocities following a
phrase-long dynamic curve with per-note spread. What matters for the tokenizers: onsets no longer fall on
any grid, and velocities vary.
"""

from __future__ import annotations

import numpy as np

from arseq.tokenizers.performance import PlayedNote
from arseq.tokenizers.score import Events


def humanize(ev: Events, ppq: int, seed: int, bpm: float = 90.0, jitter_ms: float = 15.0) -> list[PlayedNote]:
    """The notes of `ev` as played: seconds, velocities; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    end = max(n.onset + n.dur for n in ev.notes)
    # seconds per grid step over time: a random walk of tempo, +-4 % around `bpm`, ritardando per 8 bars
    phrase = 8 * 4 * ppq
    steps = np.arange(end + 1)
    drift = np.cumsum(rng.normal(0, 0.002, end + 1))
    drift -= np.linspace(0, drift[-1], end + 1)  # back to the tempo at the end
    rit = 0.06 * np.clip((steps % phrase) / phrase - 0.75, 0, None) * 4
    seconds_per_step = 60 / (bpm * ppq) * (1 + np.clip(drift, -0.04, 0.04) + rit)
    clock = np.concatenate([[0.0], np.cumsum(seconds_per_step)])
    dynamics = 70 + 22 * np.sin(np.linspace(0, np.pi * max(1, end / phrase), end + 1) + rng.uniform(0, np.pi))
    out = []
    for n in ev.notes:
        if n.dur <= 0:
            continue
        start = clock[n.onset] + rng.normal(0, jitter_ms / 1000)
        length = (clock[n.onset + n.dur] - clock[n.onset]) * rng.uniform(0.8, 1.02)
        start = max(0.0, start)
        vel = int(np.clip(dynamics[n.onset] + rng.normal(0, 6) + (6 if n.part == 0 else 0), 1, 127))
        out.append(PlayedNote(float(start), float(start + max(0.03, length)), n.pitch, vel))
    return sorted(out, key=lambda x: (x.start, x.pitch))
