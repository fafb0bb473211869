"""Decoding: one slot-based engine (continuous batching) for plain, guided, constrained, streamed and
speculative sampling, and `generate`, the engine driven for one call."""

from arseq.decode.config import Constraint, Finished, Generation, OnToken, Row, SamplingConfig
from arseq.decode.engine import Engine
from arseq.decode.generate import SpecGeneration, generate
from arseq.decode.logits import guided, process_logits
from arseq.decode.speculative import DraftModel, NGram, SpecStats, Speculative

__all__ = [
    "Constraint",
    "DraftModel",
    "Engine",
    "Finished",
    "Generation",
    "NGram",
    "OnToken",
    "Row",
    "SamplingConfig",
    "SpecGeneration",
    "SpecStats",
    "Speculative",
    "generate",
    "guided",
    "process_logits",
]
