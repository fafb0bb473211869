"""`arseq revise`: the command line of arseq.analysis.revise (argument parsing and files only)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from arseq.errors import DataError


def run_revise(argv: list[str]) -> int:
    """Parse `arseq revise` flags, revise the pieces, print the per-round JSON report (and write files with --out)."""
    from arseq import checkpoint, generation
    from arseq.analysis.revise import Piece, revise
    from arseq.atomic import atomic_write
    from arseq.decode.config import SamplingConfig
    from arseq.modalities import Plan, Request, Sample, SamplingOptions
    from arseq.outputs import claimed

    p = argparse.ArgumentParser(prog="arseq revise", description="improve finished pieces where they are weakest: rescore, "
                                "resample the least likely bar given both sides (a model trained with data.fim_rate > 0), keep improvements")
    p.add_argument("--checkpoint", required=True, help="a FIM-trained checkpoint, run folder or export")
    p.add_argument("--samples", nargs="+", metavar="FILE", help="pieces to revise (MIDI, MusicXML, ...)")
    p.add_argument("--num-samples", type=int, default=0, help="without --samples: generate this many pieces first")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--candidates", type=int, default=4, help="resampled versions of the weakest bar per piece and round")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="a folder: the revised pieces as generate writes them, and report.json")
    args = p.parse_args(argv)
    if bool(args.samples) == (args.num_samples > 0):
        raise DataError("revise: give --samples FILE ... or --num-samples N (generated first), one of them")
    loaded = checkpoint.load(args.checkpoint)
    generation.prepare_model(loaded, generation.RunOptions())
    tok, modality = loaded.tokenizer, loaded.modality
    if args.samples:
        if modality.name != "music":
            raise DataError(f"revise: the {modality.name} modality has no weakest-span search yet (music only)")
        from arseq.modalities.music_reading import read_events

        ids = [tok.encode_events(read_events(tok, Path(f))) for f in args.samples]
        pieces = [Piece(x, c) for x, c in zip(ids, modality.condition_values(tok, ids))]
    else:
        request = Request(num_samples=args.num_samples, sampling=SamplingOptions(seed=args.seed))
        plan, cfg = generation.make_plan(loaded, request)
        drawn = generation.sample(loaded, plan, cfg, 16, stream=False)
        pieces = [Piece([*s.prompt, *s.tokens, tok.eos_id], c) for s, c in zip(drawn, plan.conditions or [{}] * len(drawn))]
    cfg = SamplingConfig(temperature=args.temperature, top_p=args.top_p)
    with claimed(args.out):
        pieces, reports = revise(loaded, pieces, args.rounds, args.candidates, cfg, args.seed)
        text = json.dumps({"pieces": len(pieces), "rounds": reports}, indent=1)
        if args.out is not None:
            samples = [Sample([], piece.ids, True, math.nan) for piece in pieces]
            for path in modality.write(tok, samples, Request(out=args.out), Plan([])):
                print(f"wrote {path}", file=sys.stderr)
            atomic_write(args.out / "report.json", text + "\n")
    print(text)
    return 0
