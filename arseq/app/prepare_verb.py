"""`arseq prepare`: tokenize and cache a dataset as a config describes it; print its statistics as JSON."""

from __future__ import annotations

import json

from jsonargparse import ArgumentParser

from arseq.app.config_verbs import parse_config
from arseq.data.prepare import prepare

HELP = "tokenize and cache a dataset; print its statistics as JSON"


def add_options(parser: ArgumentParser) -> None:
    """prepare's own flag; a train config's training sections are accepted unchecked (Lightning stays unimported)."""
    for section in ("model", "optim", "trainer"):
        parser.add_argument(f"--{section}", type=dict | None, default=None, help="ignored by prepare")
    for key in ("ckpt_path", "init_from", "init_from_resize_vocab", "compile"):
        parser.add_argument(f"--{key}", type=str | bool | None, default=None, help="ignored by prepare")
    parser.add_argument(
        "--check-roundtrip",
        "--check_roundtrip",
        dest="check_roundtrip",
        action="store_true",
        help="also report the fraction of items that decode(encode(x)) reproduces exactly",
    )


def run_prepare(argv: list[str]) -> int:
    call = parse_config("prepare", HELP, argv, add_options)
    prepared = prepare(call.modality, call.options, call.data, check_roundtrip=call.cfg.check_roundtrip)
    report = {**prepared.stats, "seconds": round(prepared.seconds, 4), "cached": prepared.cached, "cache_dir": str(prepared.directory)}
    print(json.dumps(report, indent=1))
    return 0
