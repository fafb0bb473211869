"""Generated proteins as files people use: FASTA records and a CSV of their properties, best first when ranked."""

from __future__ import annotations

import csv
import io
import math
from typing import Sequence

from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord

from arseq.modalities.base import Sample
from arseq.modalities.protein.metrics import degenerate, longest_run, properties


def design_table(
    seqs: Sequence[str], samples: Sequence[Sample], rank: float | None, max_length: int | None, note: str | None = None
) -> tuple[str, str]:
    """FASTA text (each header has the length, perplexity and end: eos, max_length when EOS was forced
    there, or limit when max_new_tokens ran out; the conditions sampled with, as tag=...; and `note`, e.g. what
    --redesign rewrote) and the CSV of
    properties, in the same order. With `rank`, only that fraction of designs with the lowest perplexity,
    degenerate repeats last."""
    repeats = [degenerate(seq) for seq in seqs]
    order = list(range(len(samples)))
    if rank is not None:  # a repeat's low perplexity is not quality: degenerate designs rank last
        order = sorted(order, key=lambda i: (repeats[i], samples[i].perplexity))
        order = order[: max(1, math.ceil(rank * len(samples)))]
    width = len(str(len(samples)))
    records, rows = [], []
    for i in order:
        s, seq = samples[i], seqs[i]
        name = f"design_{i + 1:0{width}d}"
        end = "limit" if not s.stopped else "max_length" if len(seq) == max_length else "eos"
        conditions = dict(sorted(s.conditions.items()))  # what it was sampled with (--cond tag=...)
        desc = " ".join([f"length={len(seq)} perplexity={s.perplexity:.3f} end={end}", *(f"{k}={v}" for k, v in conditions.items())])
        records.append(SeqRecord(Seq(seq), id=name, description=desc + (f" {note}" if note else "")))
        rows.append(
            {
                "id": name,
                "length": len(seq),
                "perplexity": round(s.perplexity, 4),
                "end": end,
                **conditions,
                "longest_run": longest_run(seq),
                "degenerate": int(repeats[i]),
                **properties(seq),
            }
        )
    fasta = io.StringIO()
    SeqIO.write(records, fasta, "fasta")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return fasta.getvalue(), table.getvalue()
