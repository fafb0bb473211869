"""Protein redesign (`generate --prompt scaffold.fasta --redesign 40-60`): residues 40-60 of the prompt's sequence
rewritten between the fixed residues on both sides (a loop between two domains), by a model trained with
`data.fim_rate` > 0. The constraint writes residues only, between --redesign-length's bounds (default: the
span's own length), then ends; the kept residues are written back exactly as they were."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from arseq.errors import DataError
from arseq.modalities.base import Constraint, Fim, MiddleView, PrefixCounts
from arseq.modalities.infill_ranges import check_fim, parse_ranges
from arseq.modalities.plan import Plan, Request
from arseq.tokenizers.protein import ProteinBPETokenizer, ProteinTokenizer, residue_lengths, standard_ids


@dataclass
class ProteinRedesign:
    """The prompt sequence with residues [a, b) to rewrite into `lo`..`hi` residues."""

    sequence: str
    a: int
    b: int
    lo: int
    hi: int

    @property
    def note(self) -> str:
        """The FASTA header field that marks what was redesigned."""
        return f"redesigned={self.a + 1}-{self.b} kept=1-{self.a},{self.b + 1}-{len(self.sequence)}"

    def prompt(self, tok: ProteinTokenizer | ProteinBPETokenizer, fim: Fim) -> list[int]:
        return fim.prompt([tok.bos_id], tok.encode(self.sequence[: self.a]), tok.encode(self.sequence[self.b :]))

    def constraint(self, tok: ProteinTokenizer | ProteinBPETokenizer, fim: Fim, skip: int, standard_only: bool) -> Constraint:
        """Residue tokens only (standard ones with --standard-only), no EOS before `lo` residues, EOS at `hi`."""
        lengths = torch.from_numpy(residue_lengths(tok))
        residue = lengths > 0
        if standard_only:
            residue &= torch.from_numpy(standard_ids(tok))
        counts = PrefixCounts(lengths.tolist())

        def allowed(middles: list[list[int]]) -> torch.Tensor:
            mask = torch.zeros(len(middles), len(lengths), dtype=torch.bool)
            for i, m in enumerate(middles):
                n = counts(m)
                mask[i] = residue & (lengths <= self.hi - n)
                mask[i, tok.eos_id] = n >= self.lo or not bool(mask[i].any())
            return mask

        return MiddleView(allowed, [], fim, skip)

    def complete(self, tok: ProteinTokenizer | ProteinBPETokenizer, tokens: list[int]) -> str:
        return self.sequence[: self.a] + tok.decode([t for t in tokens if t != tok.eos_id]) + self.sequence[self.b :]


def parse_redesign(motifs: list[str], span: str, length: str | None, fim: Fim | None) -> ProteinRedesign:
    """--redesign A-B over the one prompt sequence, --redesign-length MIN-MAX (default B-A+1); one-line errors."""
    check_fim(fim, "--redesign")
    if len(motifs) != 1 or not motifs[0]:
        raise DataError(f"--redesign needs --prompt with one sequence (a FASTA file or residues), got {len(motifs)}")
    seq = motifs[0]
    ranges = parse_ranges(span, len(seq), "--redesign", "residue")
    if len(ranges) != 1:
        raise DataError(f"--redesign {span!r}: one span of residues per call, e.g. 40-60")
    a, b = ranges[0]
    if a == 0 and b == len(seq):
        raise DataError(f"--redesign {span!r}: that is the whole sequence; nothing is kept to design between")
    lo = hi = b - a
    if length is not None:
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", length)
        if not m or int(m.group(1)) < 1 or int(m.group(2) or m.group(1)) < int(m.group(1)):
            raise DataError(f"--redesign-length {length!r}: expected MIN-MAX residues (or N), MIN >= 1")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    return ProteinRedesign(seq, a, b, lo, hi)


def redesign_plan(tok: ProteinTokenizer | ProteinBPETokenizer, request: Request, motifs: list[str], presets: dict[str, dict[str, Any]]) -> Plan:
    """The plan of `--redesign`: one span of the prompt's sequence rewritten between its kept sides."""
    opts = request.options
    if opts.redesign is None:
        raise DataError("--redesign-length needs --redesign A-B")
    if opts.prefix or opts.min_length is not None or opts.max_length is not None:
        raise DataError("--redesign keeps the prompt's other residues: drop --prefix, --min-length and --max-length")
    fim = check_fim(request.fim, "--redesign")  # (parse_redesign's first check)
    span = parse_redesign(motifs, opts.redesign, opts.redesign_length, fim)
    prompt = span.prompt(tok, fim)
    skip = len(prompt) - prompt.index(fim.mid_id) - 1  # SPM prompts end with the prefix
    sampling: dict[str, Any] = dict(presets[opts.preset]) if opts.preset else {}
    sampling["max_new_tokens"] = span.hi + 1
    return Plan(
        [list(prompt) for _ in range(request.num_samples)],
        sampling,
        constraint=partial(span.constraint, tok, fim, skip, opts.standard_only),
        parsed=span,
    )
