"""Key finding on pitch-class profiles (Krumhansl-Schmuckler), written out so `prepare` needs no music21.

music21's `analysis.discrete.KrumhanslSchmuckler` costs ~5 ms a piece (it builds a Stream and Pitch
objects), more than reading a MIDI file with symusic and tokenizing it together; this is the same
algorithm in numpy (~20 us): the Krumhansl-Kessler profiles music21 uses, Pearson correlation of the
duration-weighted pitch-class histogram with each rotated profile, the best of 24 keys, ties broken as
music21's reverse sort breaks them (higher tonic pitch class, then minor), and the tonic spelled as
music21 spells it (its `keysValidMajor`/`keysValidMinor`). tests/test_music_key.py checks it against
music21 on the Bach chorales.
"""

from __future__ import annotations

import numpy as np

# music21.analysis.discrete.KrumhanslSchmuckler.getWeights (the Krumhansl-Kessler probe-tone ratings)
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# tonic names per pitch class as music21 spells the key ('-' as 'b')
MAJOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
# every spelling a key name may use, for reading names back (`key_pitch_class`)
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def _rotations(profile: np.ndarray) -> np.ndarray:
    """Row i: the profile with its tonic on pitch class i, centred (for Pearson correlation)."""
    rows = np.stack([np.roll(profile, i) for i in range(12)])
    return rows - rows.mean(axis=1, keepdims=True)


_CENTRED = np.concatenate([_rotations(MAJOR), _rotations(MINOR)])  # 24 x 12: majors, then minors


def find_key(histogram: np.ndarray) -> tuple[int, str, str]:
    """(tonic pitch class, "major"|"minor", name like "Bb major") of a 12-bin pitch-class histogram."""
    h = np.asarray(histogram, dtype=np.float64)
    dev = h - h.mean()
    norm = np.sqrt((_CENTRED**2).sum(axis=1) * (dev**2).sum())
    corr = np.divide(_CENTRED @ dev, norm, out=np.zeros(24), where=norm > 0)
    # music21 sorts (correlation, tonic pitch, mode) and takes the largest
    best = max(range(24), key=lambda i: (round(float(corr[i]), 12), i % 12, i >= 12))
    tonic, mode = best % 12, ("minor" if best >= 12 else "major")
    names = MINOR_NAMES if mode == "minor" else MAJOR_NAMES
    return tonic, mode, f"{names[tonic]} {mode}"


def key_pitch_class(name: str) -> tuple[int, str] | None:
    """(tonic pitch class, mode) of a key name such as "Bb major" or "C# minor"; None for another name."""
    tonic, _, mode = name.partition(" ")
    if not tonic or tonic[0] not in _LETTERS or mode not in ("major", "minor"):
        return None
    shift = {"#": 1, "b": -1, "-": -1}
    if any(c not in shift for c in tonic[1:]):
        return None
    return (_LETTERS[tonic[0]] + sum(shift[c] for c in tonic[1:])) % 12, mode
