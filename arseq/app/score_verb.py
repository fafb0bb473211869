"""`arseq score`: per-item NLL, perplexity and token count of given files (CSV; JSON on stdout)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import ArgumentParser

from arseq.analysis.score import item_row, token_label, token_scores
from arseq.app.options import parse_verb, verb_parser
from arseq.artifacts import checkpoint
from arseq.artifacts.checkpoint import Loaded
from arseq.atomic import OutputFiles
from arseq.data.config import DataConfig
from arseq.data.files import expand_paths
from arseq.data.streams import collect
from arseq.errors import DataError
from arseq.models.device import resolve_device
from arseq.models.scoring import sequence_nll
from arseq.outputs import claimed, csv_text, printable_name, to_json

HELP = "per-item NLL, perplexity and token count of given files (CSV; JSON on stdout)"


@dataclass
class ScoreOptions:
    """score

    Args:
        per_token: also each token's log-probability and rank (1 = the model's likeliest): OUT.tokens.csv with --out, else in the JSON
        out: write the per-item table here as CSV
        overwrite: replace files that --out would write and that exist already
        stride: window advance for items longer than the context (default: half the context)
        batch_size: windows per forward pass
        device: cpu, cuda, cuda:1 ... (default: cuda when available)
    """

    per_token: bool = False
    out: Path | None = None
    overwrite: bool = False
    stride: int | None = None
    batch_size: int = 16
    device: str | None = None


def score_parser() -> ArgumentParser:
    p = verb_parser("arseq score", HELP + ". Ranking FASTA variants or MIDI files by likelihood: lower nll_mean is likelier")
    p.add_argument("--data.paths", type=list[str] | None, default=None, help="files, folders or globs to score")
    p.add_class_arguments(ScoreOptions, None, as_group=True)
    return p


def run_score(argv: list[str]) -> int:
    cfg = parse_verb(score_parser(), argv, [ScoreOptions], **{"data.paths": "list"})
    paths = (cfg.get("data") or {}).get("paths") if isinstance(cfg.get("data"), dict) else cfg.get("data.paths")
    if not paths:
        raise DataError("--data.paths is required (files, folders or globs to score)")
    args = ScoreOptions(**{f.name: cfg[f.name] for f in fields(ScoreOptions)})
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    loaded = checkpoint.load(cfg.checkpoint, cfg.modality, cfg.trust_modality_import)
    loaded.model.to(resolve_device(args.device))
    with claimed(args.out):  # a second score into this --out refuses instead of replacing our table
        return score(loaded, [str(p) for p in paths], args)


def score(loaded: Loaded, data_paths: list[str], args: ScoreOptions) -> int:
    """Score the items of `data_paths`; print the JSON, write the CSV tables with --out."""
    tok, model = loaded.tokenizer, loaded.model
    context = model.cfg.max_seq_len
    stride = args.stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise DataError(f"--stride must be between 1 and the model's context ({context}), got {args.stride}")
    files = expand_paths(data_paths, loaded.modality.suffixes, "--data.paths")
    examples, skipped = collect(loaded.modality, files, None, tok, False, "reading", True, DataConfig())
    examples = [e for e in examples if len(e.tokens) > 1]
    if not examples:
        reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
        raise DataError(f"--data.paths: no item to score{' (' + reasons + ')' if reasons else ''}")
    controls, width = loaded.controls, loaded.controls.width if loaded.controls else 0
    if controls is not None:  # a conditioned model scores each item given its own conditions (unknown where it has none)
        seqs = [np.asarray(controls.insert(list(e.tokens), controls.ids(e.conditions)), dtype=np.int64) for e in examples]
    else:
        seqs = [np.asarray(e.tokens, dtype=np.int64) for e in examples]
    if args.per_token:
        scored = [(lp[width:], rk[width:]) for lp, rk in token_scores(model, seqs, batch_size=args.batch_size, pad_id=tok.pad_id, stride=stride)]
        seqs = [np.delete(s, np.s_[1 : 1 + width]) for s in seqs]
        rows = [item_row(printable_name(e.name), -float(lp.sum()), len(lp)) for e, (lp, _) in zip(examples, scored)]
    else:
        nll, count = sequence_nll(
            model, seqs, start=[1 + width] * len(seqs), batch_size=args.batch_size, pad_id=tok.pad_id, stride=stride, progress=True
        )
        rows = [item_row(printable_name(e.name), float(n), int(c)) for e, n, c in zip(examples, nll, count)]
    total_nll, total = sum(r["nll_sum"] for r in rows), sum(r["tokens"] for r in rows)
    result: dict[str, Any] = {
        "items": rows,
        "skipped": [{"file": printable_name(s.file), "reason": s.reason} for s in skipped],
        "total": item_row("(all)", total_nll, total),
        "context": context,
        "stride": stride,
    }
    if args.out is not None:
        files_out = OutputFiles(overwrite=args.overwrite, protect=[*data_paths, *files])  # never over an input
        files_out.add(args.out, csv_text(rows))
        if args.per_token:
            token_rows = [
                {
                    "name": printable_name(e.name),
                    "index": j + 1,
                    "token": int(s[j + 1]),
                    "label": token_label(tok, int(s[j + 1])),
                    "logprob": float(lp[j]),
                    "rank": int(rk[j]),
                }
                for e, s, (lp, rk) in zip(examples, seqs, scored)
                for j in range(len(lp))
            ]
            files_out.add(args.out.with_name(args.out.stem + ".tokens.csv"), csv_text(token_rows))
        for path in files_out.commit():
            print(f"wrote {path}", file=sys.stderr)
    elif args.per_token:
        for row, (lp, rk) in zip(rows, scored):
            row["logprobs"], row["ranks"] = lp.tolist(), rk.tolist()
    print(to_json(result, indent=1))
    return 0
