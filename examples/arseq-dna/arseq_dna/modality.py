"""DNA/RNA as an arseq modality, from a package of its own (entry point group `arseq.modalities`).

Reads FASTA (plain or gzipped; one item per record), writes generated sequences as FASTA, reports GC
content and bits per base. It imports only arseq's public API: `arseq.modalities`, `arseq.tokenizers`.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from arseq.modalities import (
    Constraint,
    DataError,
    EvalInputs,
    Example,
    Modality,
    OutputFiles,
    Plan,
    PrefixCounts,
    Request,
    Sample,
    Skipped,
)
from arseq.tokenizers import Tokenizer
from arseq_dna import synthetic
from arseq_dna.tokenizer import NucleotideTokenizer

FASTA = (".fa", ".fasta", ".fna", ".ffn", ".frn")


@dataclass
class DnaGenerate:
    """dna options

    Args:
        length: exact length in bases of every sequence, prompt included (default: until the model stops)
    """

    length: int | None = None


def gc_fraction(seq: str) -> float:
    """(G + C) / (A + C + G + T/U), ambiguous bases left out; NaN for a sequence without bases."""
    called = len(seq) - seq.count("N")
    return (seq.count("G") + seq.count("C")) / called if called else math.nan


class DnaModality(Modality):
    name = "dna"
    tokenizer_kinds = {NucleotideTokenizer.kind: NucleotideTokenizer}
    suffixes = FASTA + tuple(s + ".gz" for s in FASTA)

    def __init__(self, molecule: Literal["dna", "rna"] = "dna", kmer: int = 1):
        """
        Args:
            molecule: `dna` (T) or `rna` (U); the other letter is read as this one.
            kmer: bases per token: 1, or non-overlapping k-mers up to 6 (vocabulary 4^k + 8).
        """
        if not 1 <= kmer <= 6:
            raise DataError(f"modality.kmer must be between 1 and 6, got {kmer}")
        self.molecule, self.kmer = molecule, kmer

    # ---- data ------------------------------------------------------------------------------------
    def build_tokenizer(self, files: list[Path], source: str | None) -> Tokenizer:
        if source not in (None, "synthetic"):
            raise DataError(f"dna modality has no built-in source {source!r}; use data.source: synthetic or data.paths")
        return NucleotideTokenizer(self.molecule, self.kmer)

    def _records(self, files: list[Path], source: str | None) -> Iterator[tuple[str, str] | Skipped]:
        for f in files:
            try:
                with (gzip.open if f.name.endswith(".gz") else open)(f, "rt", encoding="ascii") as handle:
                    records = [(f"{f}:{r.id}", str(r.seq)) for r in SeqIO.parse(handle, "fasta")]
            except (OSError, UnicodeDecodeError, ValueError) as e:
                yield Skipped(str(f), f"not a readable FASTA file ({e})")
                continue
            if not records:
                yield Skipped(str(f), "no FASTA records (a FASTA file starts with '>')")
            yield from records
        if source == "synthetic":
            yield from ((f"synthetic_{i}", s) for i, s in enumerate(synthetic.sequences()))

    def read(self, files: list[Path], source: str | None, tokenizer: Tokenizer, check_roundtrip: bool = False) -> Iterator[Example | Skipped]:
        for record in self._records(files, source):
            if isinstance(record, Skipped):
                yield record
                continue
            name, seq = record
            if not seq:
                yield Skipped(name, "empty sequence")
                continue
            try:
                ids = tokenizer.encode_array(seq)
            except ValueError as e:
                yield Skipped(name, str(e))
                continue
            decoded = tokenizer.decode(ids)
            exact = decoded == seq if check_roundtrip else None
            info = {"bases": len(seq), "gc": decoded.count("G") + decoded.count("C"), "called": len(seq) - decoded.count("N")}
            yield Example(np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]]), name, exact, info)

    def summarize(self, tokenizer: Tokenizer, examples: list[Example]) -> dict[str, Any]:
        bases = sum(e.info["bases"] for e in examples)
        called = sum(e.info["called"] for e in examples)
        return {
            "bases": int(bases),
            "bases_per_token": bases / max(1, sum(len(e.tokens) - 2 for e in examples)),
            "gc_content": sum(e.info["gc"] for e in examples) / max(1, called),
        }

    def demo_config(self, tmp_dir: Path) -> dict[str, Any]:
        return {"data": {"paths": str(synthetic.write_fasta(tmp_dir / "genes.fasta", n=60))}}

    # ---- generation ------------------------------------------------------------------------------
    generate_options = DnaGenerate

    def plan(self, tokenizer: Tokenizer, request: Request) -> Plan:
        """--prompt is a base string to continue; --length fixes every sequence's length."""
        length = request.options.length
        if length is not None and length < 1:
            raise DataError("--length must be >= 1")
        try:
            ids = tokenizer.encode(request.prompt or "")
        except ValueError as e:
            raise DataError(f"--prompt: {e}") from None
        if length is not None and len(request.prompt or "") >= length:
            raise DataError(f"--prompt is {len(request.prompt)} bases long, not shorter than --length {length}")
        sampling = {"max_new_tokens": length + 1} if length is not None else {}  # single-base tokens and the EOS
        return Plan([[tokenizer.bos_id, *ids] for _ in range(request.num_samples)], sampling, constraint=partial(self.constraint, tokenizer, length))

    def constraint(self, tokenizer: Tokenizer, length: int | None) -> Constraint:
        """Unambiguous bases only (no N, no specials) until EOS; with a length, exactly that many bases."""
        bases = torch.from_numpy(tokenizer.token_bases)
        allowed = bases > 0
        allowed[tokenizer.n_id] = False
        counted = PrefixCounts(tokenizer.token_bases.tolist())  # bases so far; rows may be cut back (speculative decoding)

        def mask(rows: list[list[int]]) -> torch.Tensor:
            out = allowed.expand(len(rows), -1).clone()
            if length is None:
                out[:, tokenizer.eos_id] = True
                return out
            for i, row in enumerate(rows):
                total = counted(row)
                out[i] &= bases <= length - total
                out[i, tokenizer.eos_id] = total >= length
            return out

        return mask

    def _fasta(self, tokenizer: Tokenizer, samples: list[Sample]) -> str:
        records = []
        for i, s in enumerate(samples):
            seq = tokenizer.decode(s.prompt + s.tokens)
            end = "stopped" if s.stopped else "cut at --max-new-tokens"
            desc = f"length={len(seq)} gc={gc_fraction(seq):.3f} nll_per_token={s.nll:.3f} {end}"
            records.append(SeqRecord(Seq(seq), id=f"sample_{i:03d}", description=desc))
        text = io.StringIO()
        SeqIO.write(records, text, "fasta")
        return text.getvalue()

    def show(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> str:
        return self._fasta(tokenizer, samples)

    def output_files(self, tokenizer: Tokenizer, request: Request) -> list[Path]:
        """The FASTA `write` writes, all samples in it: arseq refuses it before sampling if it exists."""
        out = request.out_path()
        return [out if out.name.endswith(FASTA) else out / "samples.fasta"]

    def write(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[Path]:
        files = OutputFiles(overwrite=request.overwrite)  # atomic, 0644, never over a file unless asked
        (fasta,) = self.output_files(tokenizer, request)
        files.add(fasta, self._fasta(tokenizer, samples))
        return files.commit()

    # ---- evaluation ------------------------------------------------------------------------------
    def metrics(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: Sequence[Sequence[int]] = ()) -> dict[str, float]:
        seqs = [tokenizer.decode(s) for s in sequences]
        gc = np.array([gc_fraction(s) for s in seqs])
        gc = gc[~np.isnan(gc)]
        return {
            "gc_content": float(gc.mean()) if len(gc) else 0.0,
            "gc_std": float(gc.std()) if len(gc) else 0.0,
            "mean_length": float(np.mean([len(s) for s in seqs])) if seqs else 0.0,
        }

    def evaluate(self, tokenizer: Tokenizer, report: EvalInputs) -> dict[str, Any]:
        """Bits per base (EOS predictions included), against an order-0 model: the training set's base
        frequencies (add-one smoothed) scored on the same validation bases, and a uniform guess."""
        letters = tokenizer.bases + "N"
        train, val = ("".join(tokenizer.decode(item) for item in items) for items in (report.train, report.val))
        counts = np.array([train.count(b) for b in letters], dtype=float) + 1
        val_counts = np.array([val.count(b) for b in letters], dtype=float)
        order0 = float(-(val_counts * np.log2(counts / counts.sum())).sum() / max(1, len(val)))
        return {
            "bits_per_base": report.total_nll / math.log(2) / max(1, len(val)),
            "baselines": {"base_frequencies": {"bits_per_base": order0}, "uniform": {"bits_per_base": 2.0}},
        }

    # ---- error analysis (`arseq analyze drift`; errors in samples: the constraint's N or specials) --------
    def plausible_mistake(self, tokenizer: Tokenizer, tokens: np.ndarray, position: int, rng: np.random.Generator) -> int | None:
        """A point mutation by transition (A<->G, C<->T/U, the commonest kind) in one base of the token."""
        t = int(tokens[position])
        piece = tokenizer.vocab[t] if tokenizer.token_bases[t] > 0 and t != tokenizer.n_id else ""
        if not piece:
            return None
        swap = {"A": "G", "G": "A", "C": tokenizer.bases[3], tokenizer.bases[3]: "C"}
        i = int(rng.integers(len(piece)))
        new = piece[:i] + swap[piece[i]] + piece[i + 1 :]
        return tokenizer.vocab.index(new) if new in tokenizer.vocab else None
