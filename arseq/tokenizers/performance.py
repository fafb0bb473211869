"""Performance tokens (Oore et al. 2018, "This time with feeling"; Music Transformer): MIDI as played.

A score tokenization puts every onset on a grid of beats and every duration in notated values: for a
recorded performance (no bars, onsets and velocities as played) that loses the timing and dynamics that
make it a performance. Here time is absolute:

    <bos> Vel_20 On_60 Shift_23 On_64 Shift_8 Off_60 Vel_22 On_67 Shift_100 Shift_40 Off_64 Off_67 <eos>

- `Shift_k` moves time on by k steps of `step_ms` (10 ms: below what listeners resolve in onsets), up to
  `max_shift` steps a token (1 s), several for longer gaps;
- `On_p` / `Off_p` start and end pitch p; a note is its On to its Off (one note of a pitch at a time);
- `Vel_b` sets the velocity bin (of `velocity_bins` over 1..127) of the following notes; written only
  when it changes.

The round trip keeps onsets and offsets within half a step (5 ms) and velocities within half a bin.
`PerformanceGrammar` says which tokens may come next (an Off only for a sounding pitch, an On only for a
silent one, the end only when nothing sounds), for decoding and for the sampling constraint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from arseq.tokenizers.base import SPECIALS


@dataclass(frozen=True)
class PlayedNote:
    """A note as played: seconds from the start, MIDI pitch and velocity."""

    start: float
    end: float
    pitch: int
    velocity: int


class PerformanceTokenizer:
    """Notes as played to note-on / note-off / time-shift / velocity ids and back (see the module docstring)."""

    kind: ClassVar[str] = "performance"
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, step_ms: int = 10, max_shift: int = 100, velocity_bins: int = 32):
        if step_ms < 1 or max_shift < 1 or not 1 <= velocity_bins <= 127:
            raise ValueError("step_ms and max_shift must be >= 1, velocity_bins in 1..127")
        self.step_ms, self.max_shift, self.velocity_bins = step_ms, max_shift, velocity_bins
        self.on0 = len(SPECIALS)
        self.off0 = self.on0 + 128
        self.shift0 = self.off0 + 128  # Shift_k is shift0 + k - 1
        self.vel0 = self.shift0 + max_shift
        self._size = self.vel0 + velocity_bins

    @property
    def vocab_size(self) -> int:
        return self._size

    # ---- ids --------------------------------------------------------------------------------------
    def vel_bin(self, velocity: int) -> int:
        return min(self.velocity_bins - 1, (max(1, min(127, velocity)) - 1) * self.velocity_bins // 127)

    def bin_velocity(self, b: int) -> int:
        """The velocity a bin stands for: the middle of its range."""
        lo = -(-b * 127 // self.velocity_bins) + 1
        hi = -(-(b + 1) * 127 // self.velocity_bins)
        return (lo + hi) // 2

    def token_name(self, t: int) -> str:
        if t < self.on0:
            return SPECIALS[t]
        for start, name in ((self.vel0, "Vel"), (self.shift0, "Shift"), (self.off0, "Off"), (self.on0, "On")):
            if t >= start:
                return f"{name}_{t - start + (1 if name == 'Shift' else 0)}"
        return "?"

    def encode(self, notes: Sequence[PlayedNote]) -> list[int]:
        """BOS, the events of `notes` in time order (at one time: Offs, then Vel/On), EOS. Times are rounded
        to steps; a pitch struck again while it sounds is ended at the new onset first."""
        step = self.step_ms / 1000
        events: list[tuple[int, int, int, int]] = []  # (step, 0 off | 1 on, pitch, velocity bin)
        for n in notes:
            on = int(round(n.start / step))
            off = max(on + 1, int(round(n.end / step)))
            events += [(on, 1, n.pitch, self.vel_bin(n.velocity)), (off, 0, n.pitch, 0)]
        events.sort()
        ids, now, vel = [self.bos_id], 0, None
        sounding: dict[int, int] = {}  # pitch -> notes of it started and not ended
        for at, kind, pitch, b in events:
            if kind == 0 and not sounding.get(pitch):
                continue  # already ended by a re-strike
            ids += self._shift(at - now)
            now = at
            if kind == 0:
                sounding[pitch] -= 1
                ids.append(self.off0 + pitch)
                continue
            if sounding.get(pitch):  # re-struck while sounding: end it here
                sounding[pitch] -= 1
                ids.append(self.off0 + pitch)
            if b != vel:
                vel = b
                ids.append(self.vel0 + b)
            sounding[pitch] = sounding.get(pitch, 0) + 1
            ids.append(self.on0 + pitch)
        ids.append(self.eos_id)
        return ids

    def _shift(self, steps: int) -> list[int]:
        full, rest = divmod(steps, self.max_shift)
        return [self.shift0 + self.max_shift - 1] * full + ([self.shift0 + rest - 1] if rest else [])

    def decode(self, ids: Sequence[int]) -> list[PlayedNote]:
        """Notes of any id sequence: an Off without its On is skipped, notes still sounding at the end end
        there (`PerformanceGrammar` counts such repairs)."""
        g = PerformanceGrammar(self)
        for t in ids:
            g.feed(int(t))
            if g.ended:
                break
        return g.finish()

    def transpose(self, ids: np.ndarray, shift: int) -> np.ndarray:
        """On/Off ids moved by `shift` semitones (the caller keeps pitches in 0..127)."""
        out = ids.copy()
        for start in (self.on0, self.off0):
            m = (ids >= start) & (ids < start + 128)
            out[m] += shift
        return out

    def pitch_span(self, ids: np.ndarray) -> tuple[int, int] | None:
        m = (ids >= self.on0) & (ids < self.shift0)
        if not m.any():
            return None
        pitches = (ids[m] - self.on0) % 128
        return int(pitches.min()), int(pitches.max())

    # ---- state ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step_ms": self.step_ms, "max_shift": self.max_shift, "velocity_bins": self.velocity_bins}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PerformanceTokenizer:
        return cls(**{k: v for k, v in state.items() if k != "kind"})


class PerformanceGrammar:
    """Which performance tokens may follow (decoding and the sampling constraint): Off only for a sounding
    pitch, On only for a silent one, the end only when nothing sounds, nothing after the end."""

    def __init__(self, tok: PerformanceTokenizer):
        self.tok = tok
        self.now = 0
        self.vel = tok.velocity_bins // 2
        self.started: dict[int, tuple[int, int]] = {}  # sounding pitch -> (onset step, velocity bin)
        self.notes: list[PlayedNote] = []
        self.ended = False
        self.repairs = 0

    def feed(self, t: int) -> None:
        tok = self.tok
        if self.ended or t in (tok.pad_id, tok.bos_id):
            return
        if t == tok.eos_id:
            self.ended = True
        elif tok.on0 <= t < tok.off0:
            p = t - tok.on0
            if p in self.started:
                self.repairs += 1
                self._end(p)
            self.started[p] = (self.now, self.vel)
        elif tok.off0 <= t < tok.shift0:
            if t - tok.off0 in self.started:
                self._end(t - tok.off0)
            else:
                self.repairs += 1
        elif tok.shift0 <= t < tok.vel0:
            self.now += t - tok.shift0 + 1
        elif tok.vel0 <= t < tok.vocab_size:
            self.vel = t - tok.vel0
        else:
            self.repairs += 1

    def _end(self, pitch: int) -> None:
        on, vel = self.started.pop(pitch)
        step = self.tok.step_ms / 1000
        self.notes.append(PlayedNote(on * step, max(on + 1, self.now) * step, pitch, self.tok.bin_velocity(vel)))

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary of tokens that keep the sequence well-formed."""
        tok = self.tok
        mask = np.zeros(tok.vocab_size, dtype=bool)
        if self.ended:
            mask[tok.eos_id] = True
            return mask
        mask[tok.on0 : tok.off0] = True
        sounding = np.fromiter(self.started, dtype=np.int64, count=len(self.started))
        mask[tok.on0 + sounding] = False
        mask[tok.off0 + sounding] = True
        mask[tok.shift0 : tok.vocab_size] = True
        mask[tok.eos_id] = not self.started  # every note-on ends before the piece does
        return mask

    def finish(self) -> list[PlayedNote]:
        """The notes; any still sounding end at the last time reached (one repair each)."""
        for p in list(self.started):
            self.repairs += 1
            self._end(p)
        return sorted(self.notes, key=lambda n: (n.start, n.pitch))
