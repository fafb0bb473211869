"""`arseq revise`: improve finished pieces where they are weakest (arseq.analysis.revise), from files or fresh samples."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

from jsonargparse import ArgumentParser

from arseq.analysis.revise import Piece, revise, score_tokenizer
from arseq.app import generation
from arseq.app.options import parse_verb, verb_parser
from arseq.app.planning import make_plan
from arseq.app.run_options import RunOptions
from arseq.artifacts import checkpoint
from arseq.atomic import atomic_write
from arseq.decode.config import SamplingConfig
from arseq.errors import DataError
from arseq.modalities import Plan, Request, Sample, SamplingOptions
from arseq.modalities.music.reading import read_events
from arseq.outputs import claimed

log = logging.getLogger(__name__)
HELP = "improve finished pieces where they are weakest, with a fill-in-the-middle model"


@dataclass
class ReviseOptions:
    """revision

    Args:
        samples: pieces to revise (MIDI, MusicXML, ...)
        num_samples: without --samples: generate this many pieces first
        rounds: rounds of rescoring and resampling
        candidates: resampled versions of the weakest bar per piece and round
        temperature: sampling temperature of the candidates
        top_p: nucleus sampling of the candidates
        seed: seed of the candidates (and of the pieces generated first)
        out: a folder: the revised pieces as generate writes them, and report.json
    """

    samples: list[str] | None = None
    num_samples: int = 0
    rounds: int = 3
    candidates: int = 8
    temperature: float = 0.9
    top_p: float = 0.95
    seed: int = 0
    out: Path | None = None


def parser() -> ArgumentParser:
    p = verb_parser(
        "arseq revise", HELP + ": rescore, resample the least likely bar given both sides (a model trained with data.fim_rate > 0), keep improvements"
    )
    p.add_class_arguments(ReviseOptions, None, as_group=True)
    return p


def run_revise(argv: list[str]) -> int:
    """Parse `arseq revise` flags, revise the pieces, print the per-round JSON report (and write files with --out)."""
    cfg = parse_verb(parser(), argv, [ReviseOptions])
    args = ReviseOptions(**{f.name: cfg[f.name] for f in fields(ReviseOptions)})
    if bool(args.samples) == (args.num_samples > 0):
        raise DataError("give --samples FILE ... or --num-samples N (generated first), one of them")
    loaded = checkpoint.load(cfg.checkpoint, cfg.modality, cfg.trust_modality_import)
    generation.prepare_model(loaded, RunOptions())
    tok, modality = loaded.tokenizer, loaded.modality
    if args.samples:
        score_tok = score_tokenizer(loaded, "--samples")
        ids = [score_tok.encode_events(read_events(score_tok, Path(f))) for f in args.samples]
        pieces = [Piece(x, c) for x, c in zip(ids, modality.condition_values(tok, ids))]
    else:
        planned = make_plan(loaded, Request(num_samples=args.num_samples, sampling=SamplingOptions(seed=args.seed)))
        drawn = generation.sample(loaded, planned, 16)
        pieces = [Piece([*s.prompt, *s.tokens, tok.eos_id], s.conditions) for s in drawn]
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p)
    with claimed(args.out):
        pieces, reports = revise(loaded, pieces, args.rounds, args.candidates, sampling, args.seed)
        text = json.dumps({"pieces": len(pieces), "rounds": reports}, indent=1)
        if args.out is not None:
            samples = [Sample([], piece.ids, True, math.nan) for piece in pieces]
            for path in modality.write(tok, samples, Request(out=args.out), Plan([])):
                log.info(f"wrote {path}")
            atomic_write(args.out / "report.json", text + "\n")
    print(text)
    return 0
