"""`arseq export`: a self-contained model folder (arseq's format or a Hugging Face Llama folder)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from arseq.app.planning import make_plan
from arseq.app.options import add_trust_arguments
from arseq.artifacts import checkpoint
from arseq.artifacts.checkpoint import Loaded
from arseq.artifacts.export import export
from arseq.modalities import Request

HELP = "write config.json + model.safetensors + tokenizer.json"


def export_model(loaded: Loaded, out: str | os.PathLike, format: str = "arseq", quantize: str = "none") -> Path:
    """`export`, with the modality's sampling defaults for a Hugging Face folder's generation config."""
    sampling = make_plan(loaded, Request(num_samples=1)).cfg if format == "hf" else None
    return export(loaded, out, format, quantize, sampling)


def run_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="arseq export", description=HELP + ": a self-contained model folder "
                                "that 'arseq generate' and 'arseq evaluate' accept like a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a .ckpt from 'arseq train'")
    p.add_argument("--out", required=True, type=Path, help="a new (or empty) folder")
    p.add_argument("--format", choices=("arseq", "hf"), default="arseq",
                   help="hf: a Hugging Face LlamaForCausalLM folder (needs transformers) that arseq reads too")
    p.add_argument("--quantize", default="none", metavar="{none,int8}", help="int8: int8 weights and per-channel scales, ~4x smaller")
    add_trust_arguments(p)
    args = p.parse_args(argv)
    loaded = checkpoint.load(args.checkpoint, args.modality, args.trust_modality_import)
    out = export_model(loaded, args.out, args.format, args.quantize)
    print(f"exported to {out}")
    return 0
