"""Helpers behind text's error-analysis hooks (`plausible_mistake`, `error_predicate`): what a near miss looks
like in text (a typo), and which generated words do not exist."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from arseq.tokenizers.base import Tokenizer

KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
WORD = re.compile(r"[A-Za-z']+")


@lru_cache(maxsize=1)
def keyboard_neighbours() -> dict[str, str]:
    """Letters next to each letter on a QWERTY keyboard (same row and the rows above and below)."""
    pos = {c: (r, i) for r, row in enumerate(KEYBOARD) for i, c in enumerate(row)}
    return {c: "".join(d for d, (r2, i2) in pos.items() if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1) for c, (r, i) in pos.items()}


def typo(tokenizer: Tokenizer, token: int, rng: np.random.Generator) -> int | None:
    """The token with one letter replaced by a keyboard neighbour (case kept), when that is one token too."""
    piece = tokenizer.decode([int(token)])
    letters = [i for i, ch in enumerate(piece) if ch.lower() in keyboard_neighbours()]
    if not letters:
        return None
    i = int(rng.choice(letters))
    options = keyboard_neighbours()[piece[i].lower()]
    ch = str(rng.choice(list(options)))
    ch = ch.upper() if piece[i].isupper() else ch
    try:
        ids = tokenizer.encode(piece[:i] + ch + piece[i + 1 :])
    except (ValueError, KeyError):  # a character the tokenizer never saw
        return None
    return ids[0] if len(ids) == 1 else None


def unknown_words(decode_piece: Callable[[int], str], vocabulary: set[str]) -> Callable[[Sequence[int]], np.ndarray]:
    """Predicate: the token that ends a word (letters and apostrophes, case folded) not in `vocabulary` is an
    error. A word still open at the end of the sequence is not judged."""

    def predicate(tokens: Sequence[int]) -> np.ndarray:
        pieces = [decode_piece(int(t)) for t in tokens]
        ends = np.cumsum([len(p) for p in pieces])  # text[ends[k-1]:ends[k]] is token k
        text = "".join(pieces)
        flags = np.zeros(len(tokens), dtype=bool)
        for m in WORD.finditer(text):
            if m.end() == len(text) or m.group().lower().strip("'") in vocabulary or not m.group().strip("'"):
                continue
            flags[int(np.searchsorted(ends, m.end() - 1, side="right"))] = True
        return flags

    return predicate


def vocabulary(texts: Sequence[str]) -> set[str]:
    return {w.lower().strip("'") for t in texts for w in WORD.findall(t)}
