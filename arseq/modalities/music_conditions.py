"""What a piece can be conditioned on: its key (music21's Krumhansl-Schmuckler analysis of the notes), its
meter (the first bar's time signature) and its composer (the music21 corpus folder, else the file's folder).

Read from the tokens, so data and generated samples are described by the same code: `evaluate --cond
key="D minor"` reports the share of samples whose analysed key is the one asked for.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from arseq.tokenizers.score import Events

FIELDS = {
    "key": 'tonic and mode from the notes, e.g. "D minor", "Bb major"',
    "meter": "the first bar's time signature, e.g. 3/4",
    "composer": "the music21 corpus folder of the piece (e.g. mozart), else the name of the file's folder",
}


def analysed_key(ev: Events) -> tuple[int, str, str]:
    """(tonic pitch class, mode, name) of the piece's key by Krumhansl-Schmuckler on duration-weighted pitch classes."""
    from music21 import analysis, note, stream

    weights = np.zeros(12)
    for n in ev.notes:
        weights[n.pitch % 12] += n.dur
    weights = np.maximum(1, np.round(64 * weights / weights.sum())) * (weights > 0)  # quarters, total ~64
    s = stream.Stream()
    for pc in np.flatnonzero(weights):
        s.append(note.Note(60 + int(pc), quarterLength=float(weights[pc])))
    k = analysis.discrete.KrumhanslSchmuckler().getSolution(s)
    return k.tonic.pitchClass, k.mode, f"{k.tonic.name.replace('-', 'b')} {k.mode}"


@lru_cache(maxsize=None)
def key_pitch_class(name: str) -> tuple[int, str] | None:
    """(tonic pitch class, mode) of a key named as `analysed_key` names it ("Bb major"); None for another name."""
    from music21 import pitch

    tonic, _, mode = name.partition(" ")
    try:
        return pitch.Pitch(tonic[:1] + tonic[1:].replace("b", "-")).pitchClass, mode
    except Exception:  # music21 raises several kinds for a name that is not a pitch
        return None


@lru_cache(maxsize=None)
def transposed_keys(values: tuple[str, ...], semitones: int) -> tuple[int | None, ...]:
    """Per key in `values`: the index in `values` of the key `semitones` higher (same mode), None when absent."""
    where = {key_pitch_class(v): i for i, v in enumerate(values)}
    moved = [key_pitch_class(v) for v in values]
    return tuple(None if k is None else where.get(((k[0] + semitones) % 12, k[1])) for k in moved)


def composer_of(path: str) -> str | None:
    """The composer folder of a music21 corpus file, else the name of the file's folder."""
    import music21

    p = Path(path)
    root = Path(music21.__file__).parent / "corpus"
    try:
        return p.resolve().relative_to(root.resolve()).parts[0]
    except ValueError:
        return p.parent.name or None


def piece_conditions(ev: Events, path: str | None = None) -> dict[str, str]:
    """The condition values a piece shows (those it has)."""
    out: dict[str, str] = {}
    if ev.bars:
        out["meter"] = "{}/{}".format(*ev.bars[0].ts)
    if ev.notes:
        out["key"] = analysed_key(ev)[2]
    composer = composer_of(path) if path else None
    if composer:
        out["composer"] = composer
    return out
