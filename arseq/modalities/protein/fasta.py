"""Reading FASTA files (plain or gzip) record by record, and what makes a record unusable."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from Bio import SeqIO

from arseq.errors import DataError, first_line
from arseq.limits import bounded_search, is_file
from arseq.tokenizers.protein import ALPHABET

_INVALID = re.compile(r"[^A-Z]")


class FileProblem(Exception):
    """A file that cannot be read as FASTA; becomes a Skipped naming the file."""


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """Open plain or gzip text (detected by magic bytes, not by suffix)."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    binary = gzip.open(path, "rb") if gzipped else open(path, "rb")
    with io.TextIOWrapper(binary, encoding="utf-8", newline=None) as handle:
        yield handle


def fasta_records(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(1-based index, id, raw sequence, header line) per record; raises FileProblem with a one-line reason."""
    count = 0
    try:
        _check_whole_gzip(path)  # a truncated .gz is skipped whole, before any of its records is used
        with open_text(path) as handle:
            first = next((line for line in handle if line.strip()), "")
        if not first:
            raise FileProblem("empty file (no FASTA records)")
        if not first.startswith(">"):
            raise FileProblem(f"not FASTA: the first line does not start with '>' ({first.strip()[:30]!r})")
        with open_text(path) as handle:
            for count, record in enumerate(SeqIO.parse(handle, "fasta"), 1):
                yield count, record.id, str(record.seq), record.description
    except UnicodeDecodeError:
        raise FileProblem(f"not FASTA text (undecodable bytes after record {count})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise FileProblem(f"corrupt gzip after record {count} ({e or type(e).__name__})") from None
    except ValueError as e:  # anything else Bio.SeqIO rejects
        raise FileProblem(f"not FASTA after record {count} ({first_line(e)})") from None
    except OSError as e:
        raise FileProblem(f"cannot read ({e.strerror or e})") from None


def _check_whole_gzip(path: Path) -> None:
    """Decompress a gzip file to its end once (nothing kept): truncation or corruption raises here, before
    any record is yielded, so the file is skipped instead of aborting a run that used half of it."""
    with open(path, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            return
    with gzip.open(path, "rb") as handle:
        while handle.read(1 << 20):
            pass


def header_tag(header: str, field: int | None, pattern: re.Pattern[str] | None) -> str | None:
    """A record's tag: the first group of `pattern` in its header line, else its `field`-th whitespace
    field (1 = the id), or None where the header has none. The pattern may come from a checkpoint
    (modality.tag_pattern): it runs under a time limit (`^(a+)+$` took minutes on a 35-character header)."""
    if pattern is not None:
        found = bounded_search(pattern, header, "modality.tag_pattern")
        return (found.group(1) if found.groups() else found.group(0)) if found else None
    parts = header.split()
    return parts[field - 1] if field is not None and 1 <= field <= len(parts) else None


def normalize(raw: str) -> str:
    """Upper-case, drop whitespace and trailing '*' stop characters."""
    return re.sub(r"\s+", "", raw).upper().rstrip("*")


def record_problem(seq: str, policy: str) -> str | None:
    """Why a normalised sequence cannot be a protein, or None."""
    if not seq:
        return "empty sequence"
    if "*" in seq:
        return f"stop '*' inside the sequence at residue {seq.index('*') + 1}"
    bad = sorted(set(_INVALID.findall(seq)))
    if bad:
        return f"invalid characters {''.join(bad)!r} in the sequence (letters only)"
    outside = sorted(set(seq) - set(ALPHABET))
    if outside and policy == "keep":
        return f"letters {''.join(outside)!r} are not amino-acid codes (a config's modality.nonstandard: x maps them to X)"
    return None


def start_motifs(prefix: str | None, prompt: str | None) -> list[str]:
    """Start motifs from --prefix, or --prompt (a residue string, or a FASTA file of motifs); [""] for none."""
    if prefix and prompt:
        raise DataError("give the start motif with --prefix or --prompt, not both")
    text = prefix or prompt
    if not text:
        return [""]
    if prompt and is_file(prompt):
        try:
            records = [(f"{prompt}: record {i} ({rid})", raw) for i, rid, raw, _ in fasta_records(Path(prompt))]
        except FileProblem as e:
            raise DataError(f"{prompt}: {e}") from None
    else:
        records = [(f"{'--prefix' if prefix else '--prompt'} {text!r}", text)]
    motifs = []
    for where, raw in records:
        seq = normalize(raw)
        problem = record_problem(seq, "keep")
        if problem:
            raise DataError(f"{where}: {problem}")
        motifs.append(seq)
    return motifs
