"""Nucleotide tokens: one per base (A C G T/U, N for any ambiguous base), or non-overlapping k-mers.

With `k > 1` every full k-mer of unambiguous bases is one token; a chunk holding an N and the tail
shorter than k fall back to single-base tokens, so any sequence encodes losslessly (up to case,
ambiguity codes -> N, and T/U, which the molecule type decides).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Sequence

import numpy as np

from arseq.tokenizers import SPECIALS

AMBIGUOUS = "NRYKMSWBDHV"  # IUPAC codes for more than one base: all become N
_CODES = np.full(256, -1, dtype=np.int64)  # byte -> 0..3 (A C G T/U), 4 (N), -1 (not a nucleotide)
for _i, _b in enumerate("ACGT"):
    _CODES[[ord(_b), ord(_b.lower())]] = _i
_CODES[[ord("U"), ord("u")]] = 3
for _b in AMBIGUOUS:
    _CODES[[ord(_b), ord(_b.lower())]] = 4


class NucleotideTokenizer:
    kind: ClassVar[str] = "nucleotide"
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, molecule: str = "dna", k: int = 1):
        if molecule not in ("dna", "rna") or not 1 <= k <= 6:
            raise ValueError(f"NucleotideTokenizer needs molecule dna/rna and 1 <= k <= 6, got {molecule!r}, {k}")
        self.molecule, self.k = molecule, k
        self.bases = "ACGT" if molecule == "dna" else "ACGU"
        kmers = ["".join(p) for p in itertools.product(self.bases, repeat=k)] if k > 1 else []
        self.vocab = [*SPECIALS, *self.bases, "N", *kmers]
        self.n_id = len(SPECIALS) + 4
        self._first_kmer = self.n_id + 1
        # bases per token: 0 for specials, so a row's length in bases is a sum over its tokens
        self.token_bases = np.array([0] * len(SPECIALS) + [len(t) for t in self.vocab[len(SPECIALS) :]], dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, seq: str) -> list[int]:
        return self.encode_array(seq).tolist()

    def encode_array(self, seq: str) -> np.ndarray:
        """Vectorised: a whole chromosome is encoded in a fraction of a second."""
        try:
            raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            raise ValueError("non-ASCII character in a nucleotide sequence") from None
        codes = _CODES[raw]
        if (codes < 0).any():
            pos = int(np.argmax(codes < 0))
            raise ValueError(f"{seq[pos]!r} at position {pos} is not a nucleotide code")
        singles = codes + len(SPECIALS)
        if self.k == 1:
            return singles
        k, full = self.k, len(codes) // self.k * self.k
        chunks = codes[:full].reshape(-1, k)
        whole = (chunks < 4).all(axis=1)
        out = singles[:full].reshape(-1, k).copy()  # rows with an N stay single bases
        out[whole, 0] = self._first_kmer + chunks[whole] @ (4 ** np.arange(k - 1, -1, -1))
        out[whole, 1:] = -1
        out = out.reshape(-1)
        return np.concatenate([out[out >= 0], singles[full:]])

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids if len(SPECIALS) <= i < len(self.vocab))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "molecule": self.molecule, "k": self.k}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> NucleotideTokenizer:
        return cls(state["molecule"], state["k"])
