"""Figures of protein sequences: physico-chemical properties, composition, repeats, and novelty against
training proteins. Plain functions of strings, shared by `metrics` and the design CSV."""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from typing import Any

import numpy as np
from Bio import Align
from Bio.Align import substitution_matrices
from Bio.SeqUtils.ProtParam import ProteinAnalysis

from arseq.tokenizers.protein import STANDARD

# Novelty is measured for at most this many sequences against this many training proteins, each cut to
# MAX_ALIGN residues; only the TOP_CANDIDATES references sharing most 3-mers are aligned. Bounded cost.
NOVELTY_QUERIES, NOVELTY_REFERENCES, MAX_ALIGN, TOP_CANDIDATES = 100, 500, 1000, 5
# Degenerate: a unit of 1-10 residues repeated back to back over at least this many residues.
REPEAT_SPAN = 12


def properties(seq: str) -> dict[str, Any]:
    """Biopython ProteinAnalysis properties computed on the standard residues (others are left out and counted)."""
    std = "".join(c for c in seq if c in STANDARD)
    out: dict[str, Any] = {"nonstandard_residues": len(seq) - len(std)}
    keys = ("molecular_weight", "isoelectric_point", "instability_index", "gravy", "helix_fraction", "turn_fraction", "sheet_fraction")
    if not std:
        return {**out, **{k: "" for k in keys}}
    pa = ProteinAnalysis(std)
    helix, turn, sheet = pa.secondary_structure_fraction()
    values = (pa.molecular_weight(), pa.isoelectric_point(), pa.instability_index() if len(std) > 1 else 0.0, pa.gravy(), helix, turn, sheet)
    return {**out, **{k: round(float(v), 4) for k, v in zip(keys, values)}}


def composition(proteins: list[str]) -> np.ndarray:
    """Residue fractions over the 20 standard letters plus one bucket for all others."""
    counts: Counter[str] = Counter()
    for p in proteins:
        counts.update(p)
    vec = np.array([counts[a] for a in STANDARD] + [sum(counts.values()) - sum(counts[a] for a in STANDARD)], float)
    return vec / max(vec.sum(), 1.0)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> float:
    """KL(p || q) in nats, both smoothed by eps so empty buckets stay finite."""
    p, q = (p + eps) / (p + eps).sum(), (q + eps) / (q + eps).sum()
    return float(np.sum(p * np.log(p / q)))


def longest_run(seq: str) -> int:
    return max((len(m.group(0)) for m in re.finditer(r"(.)\1*", seq)), default=0)


def degenerate(seq: str, span: int = REPEAT_SPAN) -> bool:
    """A unit of 1-10 residues repeated back to back over >= span residues (poly-Q, 'GPGPGP...', ...)."""
    for unit in range(1, 11):
        copies = max(2, math.ceil(span / unit))
        if re.search(rf"(.{{{unit}}})\1{{{copies - 1},}}", seq):
            return True
    return False


def spread(n: int, k: int) -> list[int]:
    """At most k indices spread evenly over range(n): a deterministic subset."""
    return sorted(set(np.linspace(0, n - 1, num=min(n, k), dtype=int).tolist())) if n else []


def _aligner() -> Align.PairwiseAligner:
    return Align.PairwiseAligner(
        mode="local", substitution_matrix=substitution_matrices.load("BLOSUM62"), open_gap_score=-10.0, extend_gap_score=-0.5
    )


def novelty(queries: list[str], references: list[str], k: int = 3) -> np.ndarray:
    """Per query: identical aligned residues / query length against its best local match among the references.

    Candidates are the TOP_CANDIDATES references sharing most k-mers with the query; the best is chosen by
    BLOSUM62 local alignment score and only it is traced back. Sequences are cut to MAX_ALIGN residues;
    U and O (absent from BLOSUM62) align as X.
    """
    clean = str.maketrans("UO", "XX")
    refs = [r[:MAX_ALIGN].translate(clean) for r in references]
    index: dict[str, list[int]] = {}
    for j, r in enumerate(refs):
        for kmer in {r[i : i + k] for i in range(len(r) - k + 1)}:
            index.setdefault(kmer, []).append(j)
    aligner = _aligner()
    out = []
    for q in queries:
        q = q[:MAX_ALIGN].translate(clean)
        if not q or not refs:
            out.append(0.0)
            continue
        shared = Counter(j for kmer in {q[i : i + k] for i in range(len(q) - k + 1)} for j in index.get(kmer, ()))
        candidates = [j for j, _ in shared.most_common(TOP_CANDIDATES)] or [0]
        best = max(candidates, key=lambda j: aligner.score(q, refs[j]))
        alignment = aligner.align(q, refs[best])[0]
        out.append(alignment.counts().identities / len(q))
    return np.array(out)


@lru_cache(maxsize=1)
def similar_residues() -> dict[str, str]:
    """Per standard amino acid, the others BLOSUM62 scores as likely substitutions (score > 0), else the best."""
    m = substitution_matrices.load("BLOSUM62")
    out = {}
    for a in STANDARD:
        scores = {b: m[a][b] for b in STANDARD if b != a}
        good = [b for b, s in scores.items() if s > 0]
        out[a] = "".join(good) or max(scores, key=lambda b: scores[b])
    return out
