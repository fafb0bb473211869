"""The score vocabulary: token types, the id layout, and transforms that work on ids alone.

Ids are laid out type by type (`start[kind]` is the first id of a type); `types[id]` and `values[id]`
read any id back. Grammar, reading and writing share the grid helpers (`ts_steps`, tempo and velocity
bins) from here, so one definition serves both directions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from arseq.tokenizers.base import SPECIALS

# token types
PAD, BOS, EOS, BAR, TS, KEY, TEMPO, LEN, PART, POS, VEL, PITCH, DUR, GRACE = range(14)
TYPE_NAMES = ("PAD", "BOS", "EOS", "Bar", "TS", "Key", "Tempo", "Len", "Part", "Pos", "Vel", "Pitch", "Dur", "Grace")
TS_DENOMINATORS = (1, 2, 4, 8, 16)
KEY_RANGE = range(-7, 8)  # sharps in the key signature
TEMPO_BINS = 32  # log-spaced, 24..320 bpm (quarter notes)
TEMPO_MIN, TEMPO_MAX = 24.0, 320.0
VEL_BINS = 8
# Grace notes: the notated value and whether the stem is slashed (acciaccatura) or not (appoggiatura).
GRACE_TYPES = ("eighth", "16th", "32nd", "quarter", "64th", "half")
GRACE_KINDS = tuple((t, slash) for t in GRACE_TYPES for slash in (True, False))


class ScoreVocab:
    """Token ids of a score tokenizer with the given grid and limits; see the package docstring."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(
        self,
        ppq: int = 24,
        max_parts: int = 16,
        max_bar_quarters: int = 16,
        max_dur_quarters: int = 16,
        velocity: bool = False,
        tempo: bool = True,
        grace: bool = True,
    ):
        if ppq < 1 or max_parts < 1 or max_bar_quarters < 1 or max_dur_quarters < 1:
            raise ValueError("ppq, max_parts, max_bar_quarters and max_dur_quarters must be >= 1")
        self.ppq, self.max_parts, self.velocity, self.tempo, self.grace = ppq, max_parts, velocity, tempo, grace
        self.max_bar_quarters, self.max_dur_quarters = max_bar_quarters, max_dur_quarters
        self.max_bar, self.max_dur = max_bar_quarters * ppq, max_dur_quarters * ppq
        self.time_signatures = [
            (n, d)
            for d in TS_DENOMINATORS
            for n in range(1, 33)
            if Fraction(4 * n, d) <= max_bar_quarters and (Fraction(4 * n * ppq, d)).denominator == 1
        ]
        self.ts_index = {ts: i for i, ts in enumerate(self.time_signatures)}
        sizes = {
            BAR: 1,
            TS: len(self.time_signatures),
            KEY: len(KEY_RANGE),
            TEMPO: TEMPO_BINS if tempo else 0,
            LEN: self.max_bar,
            PART: max_parts,
            POS: self.max_bar,
            VEL: VEL_BINS if velocity else 0,
            PITCH: 128,
            DUR: self.max_dur,
            GRACE: len(GRACE_KINDS) if grace else 0,
        }
        # Grace ids come last, so a tokenizer without them (grace=False, the state of tokenizers saved before
        # grace tokens existed) has exactly the old ids, and with them every other id is unchanged too.
        types, values = [PAD, BOS, EOS], [0, 0, 0]
        self.start: dict[int, int] = {}
        for kind, size in sizes.items():
            self.start[kind] = len(types)
            types += [kind] * size
            first = {KEY: KEY_RANGE.start, LEN: 1, DUR: 1}.get(kind, 0)
            values += list(range(first, first + size))
        self.types, self.values = np.array(types, np.int16), np.array(values, np.int32)
        self.bar_id = self.start[BAR]

    @property
    def vocab_size(self) -> int:
        return len(self.types)

    def ts_steps(self, ts: tuple[int, int]) -> int:
        return 4 * ts[0] * self.ppq // ts[1]

    def tempo_bin(self, bpm: float) -> int:
        x = math.log(min(max(bpm, TEMPO_MIN), TEMPO_MAX) / TEMPO_MIN) / math.log(TEMPO_MAX / TEMPO_MIN)
        return min(TEMPO_BINS - 1, int(round(x * (TEMPO_BINS - 1))))

    def tempo_value(self, b: int) -> float:
        return round(TEMPO_MIN * (TEMPO_MAX / TEMPO_MIN) ** (b / (TEMPO_BINS - 1)), 1)

    @staticmethod
    def vel_bin(v: int) -> int:
        return min(VEL_BINS - 1, max(0, int(v)) * VEL_BINS // 128)

    @staticmethod
    def vel_value(b: int) -> int:
        return b * 128 // VEL_BINS + 128 // VEL_BINS // 2

    def token_name(self, tid: int) -> str:
        if not 0 <= tid < self.vocab_size:
            return f"?{tid}"
        kind, value = int(self.types[tid]), int(self.values[tid])
        if kind <= BAR:
            return (*SPECIALS, "Bar")[kind]
        if kind == TS:
            return "TS_{}/{}".format(*self.time_signatures[value])
        if kind == GRACE:
            kind_, slash = GRACE_KINDS[value]
            return f"Grace_{kind_}{'' if slash else '_noslash'}"
        return f"{TYPE_NAMES[kind]}_{value}"

    def transpose(self, ids: np.ndarray, semitones: int) -> np.ndarray:
        """Shift every Pitch by `semitones` and move key signatures along (caller keeps pitches in range)."""
        ids = np.array(ids, copy=True)
        if semitones == 0:
            return ids
        pitch = self.types[np.clip(ids, 0, self.vocab_size - 1)] == PITCH
        ids[pitch] += semitones
        keys = self.types[np.clip(ids, 0, self.vocab_size - 1)] == KEY
        sharps = self.values[ids[keys]]
        ids[keys] = self.start[KEY] + (sharps + 7 * semitones + 5) % 12 - 5 - KEY_RANGE.start
        return ids

    def pitch_span(self, ids: np.ndarray) -> tuple[int, int] | None:
        """(lowest, highest) MIDI pitch in `ids`, or None when there is no Pitch token."""
        ids = np.asarray(ids)
        valid = (ids >= 0) & (ids < self.vocab_size)
        ids = ids[valid]
        p = self.values[ids[self.types[ids] == PITCH]]
        return (int(p.min()), int(p.max())) if p.size else None
