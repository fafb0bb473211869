"""A small synthetic gene set for demos and smoke tests: open reading frames a tiny model can learn.

Each sequence is ATG, 12-40 codons drawn from a skewed codon table (GC-rich or AT-rich, by sequence),
and a stop codon — structure that shows up in the loss and in samples' GC content within minutes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

STOPS = ("TAA", "TAG", "TGA")
CODONS = ["".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in STOPS]


def sequences(n: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    gc = np.array([sum(b in "GC" for b in c) for c in CODONS], dtype=float)
    out = []
    for _ in range(n):
        bias = rng.choice([-1.0, 1.0])  # an AT-rich or a GC-rich gene
        p = np.exp(bias * gc + rng.normal(0, 0.3, len(CODONS)))
        codons = rng.choice(CODONS, size=rng.integers(12, 41), p=p / p.sum())
        out.append("ATG" + "".join(codons) + STOPS[rng.integers(3)])
    return out


def write_fasta(path: Path, n: int = 400, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f">synthetic_{i} orf\n{s}\n" for i, s in enumerate(sequences(n, seed))), encoding="ascii")
    return path
