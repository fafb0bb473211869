"""Amino-acid tokenizers: one id per residue letter, or BPE over residues (ProtGPT2's choice).

Both share one alphabet: the 20 standard amino acids, then X (unknown), B (D/N), Z (E/Q),
U (selenocysteine) and O (pyrrolysine). Ids 0, 1, 2 are pad, bos, eos; a protein is encoded as its
residues alone, and the modality adds BOS/EOS around it. Each tokenizer also reports, per id, how
many residues it spells and whether they are all standard, which is what length and alphabet
constraints need whatever the tokenization.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, trainers

from arseq.tokenizers.base import SPECIALS, check_special_ids

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
NONSTANDARD = "XBZUO"
ALPHABET = STANDARD + NONSTANDARD


def _check_letters(seq: str, vocabulary: str = ALPHABET) -> None:
    bad = sorted(set(seq) - set(vocabulary))
    if bad:
        raise ValueError(f"letters not in the protein alphabet: {''.join(bad)!r}")


class ProteinTokenizer:
    """One token per residue letter: 3 specials + 25 letters = 28 ids, fixed (nothing to fit)."""

    kind: ClassVar[str] = "protein"
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self) -> None:
        self._lookup = np.full(128, -1, dtype=np.int64)
        for i, letter in enumerate(ALPHABET):
            self._lookup[ord(letter)] = len(SPECIALS) + i
        self.pieces = list(SPECIALS) + list(ALPHABET)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, seq: str) -> list[int]:
        codes = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
        ids = self._lookup[codes]
        if (ids < 0).any():
            _check_letters(seq)
        return ids.tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.pieces[i] for i in ids if i >= len(SPECIALS))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "alphabet": ALPHABET}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ProteinTokenizer:
        if state.get("alphabet", ALPHABET) != ALPHABET:
            raise ValueError("protein tokenizer state has a different alphabet")
        return cls()


class ProteinBPETokenizer:
    """Byte-pair merges over residue letters (no pre-tokenizer: a whole protein is one 'word').

    Lossless on the alphabet: every letter is in the initial vocabulary, so any protein encodes.
    """

    kind: ClassVar[str] = "protein_bpe"
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, hf: HFTokenizer):
        check_special_ids(hf, "protein BPE tokenizer")
        self.hf = hf
        vocab = hf.get_vocab()
        self.pieces = [""] * len(vocab)
        for piece, i in vocab.items():
            self.pieces[i] = piece

    @classmethod
    def fit(cls, proteins: Iterable[str], vocab_size: int = 512) -> ProteinBPETokenizer:
        if vocab_size < len(SPECIALS) + len(ALPHABET):
            raise ValueError(f"BPE vocab_size must be at least {len(SPECIALS) + len(ALPHABET)}")
        hf = HFTokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),
            initial_alphabet=list(ALPHABET),
            limit_alphabet=len(ALPHABET),
            max_token_length=16,
            show_progress=False,
        )
        hf.train_from_iterator(proteins, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, seq: str) -> list[int]:
        _check_letters(seq)
        return self.hf.encode(seq, add_special_tokens=False).ids if seq else []

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.pieces[i] for i in ids if i >= len(SPECIALS))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.hf.to_str()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ProteinBPETokenizer:
        return cls(HFTokenizer.from_str(state["json"]))


def residue_lengths(tokenizer: ProteinTokenizer | ProteinBPETokenizer) -> np.ndarray:
    """Residues spelled by each id (0 for the specials)."""
    return np.array([0 if i < len(SPECIALS) else len(p) for i, p in enumerate(tokenizer.pieces)], dtype=np.int64)


def standard_ids(tokenizer: ProteinTokenizer | ProteinBPETokenizer) -> np.ndarray:
    """Bool per id: a residue token made of standard amino acids only."""
    return np.array([i >= len(SPECIALS) and set(p) <= set(STANDARD) for i, p in enumerate(tokenizer.pieces)])
