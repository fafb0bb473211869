"""Proteins: FASTA in (plain or gzip, through Bio.SeqIO), designs out as FASTA plus a property CSV.

Each protein is one item, BOS + residues + EOS, so a training window never joins two proteins without
the separator. Proteins longer than the context are windowed, never truncated: training draws random
windows from the stream of items, and evaluation scores every token after BOS exactly once, a long
protein in windows of the context that advance by `--stride` (the core's scorer: at least half a context
before every token past the first window by default). The `baselines.unigram` perplexity counts exactly
the same tokens.

Bad input. A file that cannot be used from its start (unreadable, empty, not FASTA, not UTF-8 text,
not gzip inside) or one record (empty, digits or symbols, a '*' inside the sequence, letters outside
the alphabet) is reported as `Skipped` naming the file and record, and the rest of the corpus is used.
Files are streamed, so a file that breaks after some records were read (a truncated or corrupt gzip)
stops the run with a `DataError` rather than train on half of it; so does a corpus with nothing
usable left. Length, non-standard and duplicate filters are counted in `prepare`'s summary instead.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from arseq.atomic import atomic_write
from arseq.modalities import (
    DataError,
    EvalInputs,
    Example,
    Modality,
    OutputFiles,
    Plan,
    Request,
    Sample,
    SamplingConfig,
    Skipped,
    TokenSeqs,
)
from arseq.modalities.protein.designs import design_table
from arseq.modalities.protein.encoding import encode_proteins
from arseq.modalities.protein.fasta import (
    FileProblem,
    fasta_records,
    header_tag,
    normalize,
    record_problem,
    start_motifs,
)
from arseq.modalities.protein.generating import PRESETS, ProteinGenerate, check_lengths, length_constraint
from arseq.modalities.protein.infill import ProteinRedesign, redesign_plan
from arseq.modalities.protein.metrics import (
    NOVELTY_QUERIES,
    NOVELTY_REFERENCES,
    composition,
    degenerate,
    kl_divergence,
    longest_run,
    novelty,
    similar_residues,
    spread,
)
from arseq.tokenizers.base import Tokenizer
from arseq.tokenizers.protein import (
    NONSTANDARD,
    STANDARD,
    ProteinBPETokenizer,
    ProteinTokenizer,
    residue_lengths,
)

ProteinTokenizers = ProteinTokenizer | ProteinBPETokenizer
NONSTANDARD_POLICIES = ("keep", "x", "drop")


def _protein_tokenizer(tokenizer: Tokenizer) -> ProteinTokenizers:
    """The tokenizer a hook is given (the plugin API says any `Tokenizer`), as the one this modality makes."""
    if not isinstance(tokenizer, (ProteinTokenizer, ProteinBPETokenizer)):
        raise TypeError(f"the protein modality works with a protein or protein BPE tokenizer, not {type(tokenizer).__name__}")
    return tokenizer


class ProteinModality(Modality):
    """Protein sequences from FASTA files; designs written as FASTA with perplexities and a property CSV."""

    name = "protein"
    tokenizer_kinds = {ProteinTokenizer.kind: ProteinTokenizer, ProteinBPETokenizer.kind: ProteinBPETokenizer}
    suffixes = tuple(s + gz for s in (".fasta", ".fa", ".faa", ".fas", ".fsa") for gz in ("", ".gz"))
    condition_fields = {"tag": "a tag from each FASTA header (modality.tag_field / tag_pattern), e.g. a localization"}

    def __init__(
        self,
        tokenizer: str = "protein",
        bpe_vocab_size: int = 512,
        min_length: int = 1,
        max_length: int | None = None,
        nonstandard: str = "keep",
        deduplicate: bool = True,
        tag_field: int | None = 2,
        tag_pattern: str | None = None,
    ):
        """
        Args:
            tokenizer: "protein" (one token per residue) or "protein_bpe" (BPE over residues, fitted on the data).
            bpe_vocab_size: vocabulary size of the BPE tokenizer, specials included.
            min_length: proteins with fewer residues are left out.
            max_length: proteins with more residues are left out (None: no limit; long ones are windowed).
            nonstandard: X/B/Z/U/O and other letters: "keep" (X B Z U O as tokens, other letters skip the
                record), "x" (map every non-standard letter to X), "drop" (leave out such records).
            deduplicate: leave out exact repeats of a sequence already read.
            tag_field: the condition `tag` of a protein is this whitespace field of its FASTA header (1 is the
                id; the shared DeepLoc files have the localization, e.g. Cell.membrane-M, in field 2); None: no tags.
            tag_pattern: instead, a regular expression searched in the header; its first group is the tag.
        """
        if tokenizer not in self.tokenizer_kinds:
            raise DataError(f"modality.tokenizer must be one of {sorted(self.tokenizer_kinds)}, not {tokenizer!r}")
        if nonstandard not in NONSTANDARD_POLICIES:
            raise DataError(f"modality.nonstandard must be one of {NONSTANDARD_POLICIES}, not {nonstandard!r}")
        if min_length < 1 or (max_length is not None and max_length < min_length):
            raise DataError(f"modality lengths need 1 <= min_length <= max_length (got {min_length}, {max_length})")
        self.tokenizer = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.min_length, self.max_length = min_length, max_length
        self.nonstandard = nonstandard
        self.deduplicate = deduplicate
        try:
            self.tag_pattern = re.compile(tag_pattern) if tag_pattern else None
        except re.error as e:
            raise DataError(f"modality.tag_pattern {tag_pattern!r}: not a regular expression ({e})") from None
        self.tag_field = tag_field
        self.filtered: Counter[str] = Counter()

    # ---- data ------------------------------------------------------------------------------------

    def demo_config(self, tmp_dir: Path) -> dict[str, Any]:
        """Twenty short random proteins in one FASTA file."""
        rng = np.random.default_rng(0)
        records = [f">demo_{i}\nM{''.join(rng.choice(list(STANDARD), size=int(rng.integers(30, 60))))}" for i in range(20)]
        atomic_write(tmp_dir / "demo.fasta", "\n".join(records) + "\n")
        return {"data": {"paths": str(tmp_dir / "demo.fasta")}}

    def proteins(self, files: list[Path]) -> Iterator[tuple[str, str, str | None] | Skipped]:
        """(name, normalised sequence, tag) per usable protein and a Skipped per unusable file or record."""
        seen: set[bytes] = set()
        for path in files:
            index = 0
            try:
                for index, rid, raw, header in fasta_records(path):
                    seq = normalize(raw)
                    problem = record_problem(seq, self.nonstandard)
                    if problem:
                        yield Skipped(str(path), f"record {index} ({rid or 'no id'}): {problem}")
                        continue
                    kept = self._apply_filters(seq, seen)
                    if kept is not None:
                        yield rid or f"{path.name}:{index}", kept, header_tag(header, self.tag_field, self.tag_pattern)
            except FileProblem as e:
                if index:  # records of this file were used already: never train on half a file
                    raise DataError(f"{path}: {e}") from None
                yield Skipped(str(path), str(e))

    def _apply_filters(self, seq: str, seen: set[bytes]) -> str | None:
        if self.nonstandard == "x" and set(seq) - set(STANDARD + "X"):
            seq = re.sub(f"[^{STANDARD}X]", "X", seq)
            self.filtered["mapped_to_x"] += 1
        if self.nonstandard == "drop" and set(seq) - set(STANDARD):
            self.filtered["nonstandard_dropped"] += 1
            return None
        if len(seq) < self.min_length or (self.max_length is not None and len(seq) > self.max_length):
            self.filtered["too_short" if len(seq) < self.min_length else "too_long"] += 1
            return None
        if self.deduplicate:
            digest = hashlib.blake2b(seq.encode(), digest_size=16).digest()
            if digest in seen:
                self.filtered["duplicates"] += 1
                return None
            seen.add(digest)
        return seq

    def build_tokenizer(self, files: list[Path], source: str | None) -> ProteinTokenizers:
        if source:
            raise DataError(f"the protein modality has no built-in data source ({source!r}); use data.paths")
        if self.tokenizer == ProteinTokenizer.kind:
            return ProteinTokenizer()
        seqs = [p[1] for p in self.proteins(files) if not isinstance(p, Skipped)]
        self.filtered.clear()  # read() counts them again
        if not seqs:
            raise DataError(f"no usable protein to fit the BPE tokenizer in {len(files)} file(s)")
        return ProteinBPETokenizer.fit(seqs, self.bpe_vocab_size)

    def read(self, files: list[Path], source: str | None, tokenizer: Tokenizer, check_roundtrip: bool = False) -> Iterator[Example | Skipped]:
        tokenizer = _protein_tokenizer(tokenizer)
        if source:
            raise DataError(f"the protein modality has no built-in data source ({source!r}); use data.paths")
        used, first_skip = 0, None
        for item in encode_proteins(self.proteins(files), tokenizer, check_roundtrip):
            if isinstance(item, Skipped):
                first_skip = first_skip or item
                yield item
                continue
            (name, seq, tag), ids, exact = item
            info = {"residues": float(len(seq)), "nonstandard": float(sum(seq.count(c) for c in NONSTANDARD))}
            used += 1
            yield Example([tokenizer.bos_id, *ids, tokenizer.eos_id], name=name, exact=exact, info=info, conditions={"tag": tag} if tag else {})
        if used == 0:
            if first_skip is not None:
                where = "" if len(files) == 1 else f"no usable protein in {len(files)} files; first problem: "
                raise DataError(f"{where}{first_skip.file}: {first_skip.reason}")
            raise DataError(f"no protein in {len(files)} file(s) passes the filters ({dict(self.filtered)})")

    def summarize(self, tokenizer: Tokenizer, examples: list[Example]) -> dict[str, Any]:
        tokenizer = _protein_tokenizer(tokenizer)
        residues = sum(e.info.get("residues", 0.0) for e in examples)
        tokens = sum(len(e.tokens) - 2 for e in examples)
        out: dict[str, Any] = {
            "num_residues": int(residues),
            "mean_length": residues / max(len(examples), 1),
            "nonstandard_fraction": sum(e.info.get("nonstandard", 0.0) for e in examples) / max(residues, 1),
            "filtered": dict(self.filtered),
        }
        if tokenizer.kind == ProteinBPETokenizer.kind:
            out["residues_per_token"] = residues / max(tokens, 1)
        return out

    # ---- generation ------------------------------------------------------------------------------
    generate_options = ProteinGenerate

    def plan(self, tokenizer: Tokenizer, request: Request) -> Plan:
        """Designs start with the motif(s) of --prefix or --prompt; --preset gives sampling defaults and
        --max-length / --min-length size max_new_tokens; the constraint keeps lengths in range."""
        tokenizer = _protein_tokenizer(tokenizer)
        opts: ProteinGenerate = request.options
        prefixes = start_motifs(opts.prefix, request.prompt)
        if opts.redesign is not None or opts.redesign_length is not None:
            return redesign_plan(tokenizer, request, prefixes, PRESETS)
        check_lengths(opts, prefixes)
        sampling: dict[str, Any] = dict(PRESETS[opts.preset]) if opts.preset else {}
        shortest = min(map(len, prefixes))
        if opts.max_length is not None:  # room for the longest design and its EOS; the constraint ends it in time
            sampling["max_new_tokens"] = opts.max_length - shortest + 1
        elif opts.min_length is not None:
            sampling["max_new_tokens"] = max(SamplingConfig.max_new_tokens, opts.min_length - shortest + 1)
        prompts = [[tokenizer.bos_id, *tokenizer.encode(prefixes[i % len(prefixes)])] for i in range(request.num_samples)]
        return Plan(prompts, sampling, constraint=partial(length_constraint, tokenizer, opts))

    def _designs(self, tokenizer: ProteinTokenizers, samples: list[Sample], request: Request, plan: Plan) -> tuple[str, str]:
        """FASTA (prefix + design; the header has its length, perplexity and end: eos, max_length when EOS
        was forced there, or limit when max_new_tokens ran out) and the CSV of properties."""
        span = plan.parsed if isinstance(plan.parsed, ProteinRedesign) else None
        seqs = [span.complete(tokenizer, s.tokens) if span else tokenizer.decode([*s.prompt, *s.tokens]) for s in samples]
        return design_table(seqs, samples, request.options.rank, request.options.max_length, span.note if span else None)

    def show(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> str:
        tokenizer = _protein_tokenizer(tokenizer)
        return self._designs(tokenizer, samples, request, plan)[0]

    def output_files(self, tokenizer: Tokenizer, request: Request) -> list[Path]:
        """The FASTA (`--out`, or designs.fasta in the folder it names) and the property CSV beside it."""
        out = request.out_path()
        if out.is_dir():
            out = out / "designs.fasta"
        if out.suffix == ".csv":
            raise DataError(f"{out}: --out names the FASTA file; the property CSV is written beside it")
        return [out, out.with_name(out.name.removesuffix(".gz")).with_suffix(".csv")]

    def write(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[Path]:
        """The FASTA and beside it the property CSV, both computed in full before either file is replaced atomically."""
        tokenizer = _protein_tokenizer(tokenizer)
        fasta, table = self._designs(tokenizer, samples, request, plan)
        out, csv_path = self.output_files(tokenizer, request)
        files = OutputFiles(overwrite=request.overwrite, protect=[request.prompt])
        files.add(out, gzip.compress(fasta.encode()) if out.name.endswith(".gz") else fasta)
        files.add(csv_path, table)
        return files.commit()

    # ---- reporting -------------------------------------------------------------------------------
    def evaluate(self, tokenizer: Tokenizer, report: EvalInputs) -> dict[str, Any]:
        """With a BPE tokenizer, perplexity per residue (EOS counts as one), to compare tokenizers."""
        tokenizer = _protein_tokenizer(tokenizer)
        if tokenizer.kind != ProteinBPETokenizer.kind:
            return {}
        val = np.concatenate([np.asarray(t[1:], dtype=np.int64) for t in report.val])
        residues = float(np.maximum(residue_lengths(tokenizer)[val], 1).sum())
        return {"perplexity_per_residue": math.exp(report.total_nll / residues)}

    def metrics(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: TokenSeqs = ()) -> dict[str, float]:
        """Length, composition, repeats and (given training items as `reference`) KL and novelty.

        The same keys for samples and held-out data, so each figure has its natural yardstick: e.g. the
        samples' `composition_kl` to the training set beside the validation set's own.
        """
        proteins = [tokenizer.decode(s) for s in sequences]
        lengths = np.array([len(p) for p in proteins], dtype=np.float64) if proteins else np.zeros(1)
        comp = composition(proteins)
        out = {
            "num_sequences": float(len(proteins)),
            "length_mean": float(lengths.mean()),
            "length_std": float(lengths.std()),
            "length_min": float(lengths.min()),
            "length_median": float(np.median(lengths)),
            "length_max": float(lengths.max()),
            **{f"aa_{a}": float(f) for a, f in zip(STANDARD, comp)},
            "aa_nonstandard": float(comp[-1]),
            "standard_only_fraction": float(np.mean([not set(p) - set(STANDARD) for p in proteins] or [False])),
            "degenerate_fraction": float(np.mean([degenerate(p) for p in proteins] or [False])),
            "longest_run_mean": float(np.mean([longest_run(p) for p in proteins] or [0])),
            "composition_kl": math.nan,
            "train_identity_mean": math.nan,
            "train_identity_max": math.nan,
            "near_copy_fraction": math.nan,
        }
        if len(reference):
            out["composition_kl"] = kl_divergence(comp, composition([tokenizer.decode(list(t)) for t in reference]))
            references = [tokenizer.decode(list(reference[i])) for i in spread(len(reference), NOVELTY_REFERENCES)]
            ident = novelty([proteins[i] for i in spread(len(proteins), NOVELTY_QUERIES)], references)
            if len(ident):
                out["train_identity_mean"] = float(ident.mean())
                out["train_identity_max"] = float(ident.max())
                out["near_copy_fraction"] = float((ident >= 0.9).mean())
        return out

    def plausible_mistake(self, tokenizer: Tokenizer, tokens: np.ndarray, position: int, rng: np.random.Generator) -> int | None:
        """A substituted amino acid: one residue of the token swapped for one BLOSUM62 scores as a likely substitution."""
        tokenizer = _protein_tokenizer(tokenizer)
        tokenizer = _protein_tokenizer(tokenizer)
        t = int(tokens[position])
        special = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
        piece = tokenizer.pieces[t] if 0 <= t < len(tokenizer.pieces) and t not in special else ""  # not a control token
        spots = [i for i, a in enumerate(piece) if a in STANDARD]
        if not spots:
            return None
        i = int(rng.choice(spots))
        new = piece[:i] + str(rng.choice(list(similar_residues()[piece[i]]))) + piece[i + 1 :]
        return tokenizer.pieces.index(new) if new in tokenizer.pieces else None

    def error_predicate(self, tokenizer: Tokenizer, reference: list[np.ndarray]) -> Callable[[Any], np.ndarray]:
        """A token holding a non-standard residue (X, B, Z, U, O) is an error."""
        tokenizer = _protein_tokenizer(tokenizer)
        special = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
        bad = np.array([i not in special and bool(set(p) & set(NONSTANDARD)) for i, p in enumerate(tokenizer.pieces)])
        return lambda tokens: bad[np.clip(np.asarray(tokens, dtype=np.int64), 0, len(bad) - 1)]
