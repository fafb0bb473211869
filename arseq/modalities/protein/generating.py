"""Generating proteins: the options of `arseq generate` for proteins, published sampling presets, and the
constraint that keeps designs to residue tokens and inside --min-length / --max-length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from arseq.modalities import Constraint, DataError, PrefixCounts
from arseq.tokenizers.protein import STANDARD, ProteinBPETokenizer, ProteinTokenizer, residue_lengths, standard_ids

# Published sampling settings: ProtGPT2 (Ferruz et al. 2022) and ProGen2 (Nijkamp et al. 2022).
# With a 28-letter vocabulary ProtGPT2's top-k of 950 keeps every token; it matters for BPE vocabularies.
PRESETS: dict[str, dict[str, float]] = {
    "protgpt2": {"top_k": 950, "repetition_penalty": 1.2},
    "progen2": {"temperature": 0.8, "top_p": 0.9},
}


@dataclass
class ProteinGenerate:
    """protein options

    Args:
        prefix: start motif every design begins with, e.g. MKT
        min_length: fewest residues per design (prefix included)
        max_length: most residues per design (prefix included)
        standard_only: only the 20 standard amino acids
        preset: published sampling settings, as defaults (given sampling options win): protgpt2 (top_k 950,
            repetition_penalty 1.2) or progen2 (temperature 0.8, top_p 0.9)
        rank: keep this fraction of designs with the lowest perplexity, best first; designs with degenerate
            repeats rank after all others (a repeat is easy to predict)
        redesign: with --prompt (one sequence): rewrite these residues, e.g. 40-60, keeping the others as they are
            (fill in the middle; needs a model trained with data.fim_rate > 0)
        redesign_length: with --redesign: residues the new span may have, MIN-MAX or N (default: the span's own length)
    """

    prefix: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    standard_only: bool = False
    preset: Literal["protgpt2", "progen2"] | None = None
    rank: float | None = None
    redesign: str | None = None
    redesign_length: str | None = None


def check_lengths(opts: ProteinGenerate, prefixes: list[str]) -> None:
    """One-line errors for --min-length, --max-length, --rank, --preset and --standard-only that cannot be met."""
    lo, hi, rank = opts.min_length, opts.max_length, opts.rank
    if lo is not None and lo < 1 or hi is not None and hi < 1:
        raise DataError("--min-length and --max-length must be >= 1")
    if lo is not None and hi is not None and lo > hi:
        raise DataError(f"--min-length {lo} is more than --max-length {hi}")
    if hi is not None and max(map(len, prefixes)) > hi:
        raise DataError(f"the start motif is longer than --max-length {hi}")
    if rank is not None and not 0 < rank <= 1:
        raise DataError(f"--rank must be a fraction in (0, 1], not {rank}")
    if opts.preset is not None and opts.preset not in PRESETS:
        raise DataError(f"--preset {opts.preset!r}: not one of {', '.join(sorted(PRESETS))}")
    if opts.standard_only and any(set(p) - set(STANDARD) for p in prefixes):
        raise DataError("--standard-only but the start motif has non-standard letters")


def length_constraint(tokenizer: ProteinTokenizer | ProteinBPETokenizer, opts: ProteinGenerate) -> Constraint:
    """Only residue tokens (of the chosen alphabet), no EOS before --min-length, EOS at --max-length."""
    lengths = torch.from_numpy(residue_lengths(tokenizer))
    residue = lengths > 0
    if opts.standard_only:
        residue &= torch.from_numpy(standard_ids(tokenizer))
    lo = max(1, opts.min_length or 1)
    hi = opts.max_length
    eos = tokenizer.eos_id
    residues = PrefixCounts(lengths.tolist(), skip=1)  # per row, also when cut back (row[0] is BOS)

    def allowed(rows: list[list[int]]) -> torch.Tensor:
        mask = torch.zeros(len(rows), len(lengths), dtype=torch.bool)
        for i, row in enumerate(rows):
            n = residues(row)
            if row[-1] == eos and len(row) > 1:  # finished row: anything valid keeps the sampler happy
                mask[i, eos] = True
                continue
            room = None if hi is None else hi - n
            mask[i] = residue if room is None else residue & (lengths <= room)
            mask[i, eos] = n >= lo or not bool(mask[i].any())
        return mask

    return allowed
