"""`arseq export`: a self-contained model folder (arseq's format or a Hugging Face Llama folder)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from arseq.app.options import parse_verb, verb_parser
from arseq.app.planning import make_plan
from arseq.artifacts import checkpoint
from arseq.artifacts.checkpoint import Loaded
from arseq.artifacts.export import export
from arseq.errors import DataError
from arseq.modalities import Request

HELP = "write config.json + model.safetensors + tokenizer.json"


def export_model(loaded: Loaded, out: str | os.PathLike, format: str = "arseq", quantize: str = "none", overwrite: bool = False) -> Path:
    """`export`, with the modality's sampling defaults for a Hugging Face folder's generation config."""
    sampling = make_plan(loaded, Request(num_samples=1)).cfg if format == "hf" else None
    return export(loaded, out, format, quantize, sampling, overwrite)


@dataclass
class ExportOptions:
    """export

    Args:
        out: a new (or empty) folder
        format: arseq, or hf: a Hugging Face LlamaForCausalLM folder (needs transformers) that arseq reads too
        quantize: none, or int8: int8 weights and per-channel scales, ~4x smaller (arseq format)
        overwrite: replace an earlier export in --out (a folder of an export's files only)
    """

    out: Path | None = None
    format: Literal["arseq", "hf"] = "arseq"
    quantize: Literal["none", "int8"] = "none"
    overwrite: bool = False


def run_export(argv: list[str]) -> int:
    p = verb_parser("arseq export", HELP + ": a self-contained model folder that 'arseq generate' and 'arseq evaluate' accept like a checkpoint")
    p.add_class_arguments(ExportOptions, None, as_group=True)
    cfg = parse_verb(p, argv, [ExportOptions])
    if cfg.out is None:
        raise DataError("--out is required (a new or empty folder)")
    loaded = checkpoint.load(cfg.checkpoint, cfg.modality, cfg.trust_modality_import)
    out = export_model(loaded, cfg.out, cfg.format, cfg.quantize, cfg.overwrite)
    print(f"exported to {out}")
    return 0
