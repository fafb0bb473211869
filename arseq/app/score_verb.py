"""`arseq score`: per-item NLL, perplexity and token count of given files (CSV; JSON on stdout)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from arseq.analysis.score import item_row, token_label, token_scores
from arseq.app.options import add_trust_arguments
from arseq.artifacts import checkpoint
from arseq.artifacts.checkpoint import Loaded
from arseq.atomic import OutputFiles
from arseq.data.files import expand_paths
from arseq.data.prepare import _collect
from arseq.errors import DataError
from arseq.models.device import resolve_device
from arseq.models.scoring import sequence_nll
from arseq.outputs import claimed, csv_text, printable_name, to_json

HELP = "per-item NLL, perplexity and token count of given files (CSV; JSON on stdout)"


def score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arseq score", description=HELP + ". Ranking FASTA variants or MIDI "
                                "files by likelihood: lower nll_mean is likelier.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a .ckpt, a run folder or an export")
    p.add_argument("--data.paths", dest="data_paths", nargs="+", required=True, help="files, folders or globs to score")
    p.add_argument("--per-token", action="store_true",
                   help="also each token's log-probability and rank (1 = the model's likeliest): OUT.tokens.csv with --out, else in the JSON")
    p.add_argument("--out", type=Path, default=None, help="write the per-item table here as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace files that --out would write and that exist already")
    p.add_argument("--stride", type=int, default=None, help="window advance for items longer than the context (default: half the context)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_trust_arguments(p)
    return p


def run_score(argv: list[str]) -> int:
    args = score_parser().parse_args(argv)
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    with claimed(args.out):  # a second score into this --out refuses instead of replacing our table
        return score(args)


def score(args: argparse.Namespace) -> int:
    loaded = _load(args)
    tok, model = loaded.tokenizer, loaded.model
    context = model.cfg.max_seq_len
    stride = args.stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise DataError(f"--stride must be between 1 and the model's context ({context}), got {args.stride}")
    files = expand_paths(args.data_paths, loaded.modality.suffixes, "--data.paths")
    examples, skipped = _collect(loaded.modality, files, None, tok, False, "reading", True)
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
        nll, count = sequence_nll(model, seqs, start=[1 + width] * len(seqs), batch_size=args.batch_size, pad_id=tok.pad_id,
                                  stride=stride, progress=True)
        rows = [item_row(printable_name(e.name), float(n), int(c)) for e, n, c in zip(examples, nll, count)]
    total_nll, total = sum(r["nll_sum"] for r in rows), sum(r["tokens"] for r in rows)
    result: dict[str, Any] = {"items": rows, "skipped": [{"file": printable_name(s.file), "reason": s.reason} for s in skipped],
                              "total": item_row("(all)", total_nll, total), "context": context, "stride": stride}
    if args.out is not None:
        files_out = OutputFiles(overwrite=args.overwrite, protect=[*args.data_paths, *files])  # never over an input
        files_out.add(args.out, csv_text(rows))
        if args.per_token:
            token_rows = [{"name": printable_name(e.name), "index": j + 1, "token": int(s[j + 1]), "label": token_label(tok, int(s[j + 1])),
                           "logprob": float(lp[j]), "rank": int(rk[j])}
                          for e, s, (lp, rk) in zip(examples, seqs, scored) for j in range(len(lp))]
            files_out.add(args.out.with_name(args.out.stem + ".tokens.csv"), csv_text(token_rows))
        for path in files_out.commit():
            print(f"wrote {path}", file=sys.stderr)
    elif args.per_token:
        for row, (lp, rk) in zip(rows, scored):
            row["logprobs"], row["ranks"] = lp.tolist(), rk.tolist()
    print(to_json(result, indent=1))
    return 0




def _load(args: argparse.Namespace) -> Loaded:
    loaded = checkpoint.load(args.checkpoint, args.modality, args.trust_modality_import)
    loaded.model.to(resolve_device(args.device))
    return loaded
