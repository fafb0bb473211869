"""What a piece can be conditioned on: its key (Krumhansl-Schmuckler analysis of the notes, as music21 does it: `key`), its
meter (the first bar's time signature) and its composer (the music21 corpus folder, else the file's folder).

Read from the tokens, so data and generated samples are described by the same code: `evaluate --cond
key="D minor"` reports the share of samples whose analysed key is the one asked for.
"""

from __future__ import annotations

import importlib.util
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from arseq.modalities.music.key import find_key, key_pitch_class
from arseq.tokenizers.score import Events

FIELDS = {
    "key": 'tonic and mode from the notes, e.g. "D minor", "Bb major"',
    "meter": "the first bar's time signature, e.g. 3/4",
    "composer": "the music21 corpus folder of the piece (e.g. mozart), else the name of the file's folder",
}


def pitch_class_histogram(ev: Events) -> np.ndarray:
    """Duration-weighted pitch classes, scaled to ~64 quarters with every present class at least 1: the
    histogram arseq has always analysed (keys in existing caches and checkpoints were found from it)."""
    weights = np.zeros(12)
    for n in ev.notes:
        weights[n.pitch % 12] += n.dur
    return np.maximum(1, np.round(64 * weights / weights.sum())) * (weights > 0)


def analysed_key(ev: Events) -> tuple[int, str, str]:
    """(tonic pitch class, mode, name) of the piece's key by Krumhansl-Schmuckler on duration-weighted
    pitch classes: arseq's own numpy version of music21's analysis (`key`), no music21 needed."""
    return find_key(pitch_class_histogram(ev))


@cache
def transposed_keys(values: tuple[str, ...], semitones: int) -> tuple[int | None, ...]:
    """Per key in `values`: the index in `values` of the key `semitones` higher (same mode), None when absent."""
    where = {key_pitch_class(v): i for i, v in enumerate(values)}
    moved = [key_pitch_class(v) for v in values]
    return tuple(None if k is None else where.get(((k[0] + semitones) % 12, k[1])) for k in moved)


def composer_of(path: str) -> str | None:
    """The composer folder of a music21 corpus file, else the name of the file's folder. Finds music21's
    corpus without importing music21 (~1 s), which the fast MIDI path otherwise never needs."""
    p = Path(path)
    root = _corpus_root()
    if root is None:
        return p.parent.name or None
    try:
        return p.resolve().relative_to(root.resolve()).parts[0]
    except ValueError:
        return p.parent.name or None


@lru_cache(maxsize=1)
def _corpus_root() -> Path | None:
    spec = importlib.util.find_spec("music21")
    return Path(spec.origin).parent / "corpus" if spec is not None and spec.origin else None


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
