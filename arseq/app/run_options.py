"""How a model runs for generate, evaluate and analyze drift: batch, device, compile, int8, dtype, draft."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RunOptions:
    """How the model runs

    Args:
        batch_size: samples (or evaluation chunks) per forward pass
        device: cpu, cuda, cuda:1 ... (default: cuda when available)
        compile: off, on or auto: torch.compile the decode step, and with --draft both models' passes (CUDA graphs on a GPU); auto falls back to eager where it cannot work
        quantize: none or int8 (int8 weights, per-channel scales)
        dtype: float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on a GPU that supports it)
        draft: speculative decoding, the same samples faster: a small model with this model's tokenizer (checkpoint,
            run folder or export) proposes tokens, or 'ngram': what followed the last n-gram earlier
        draft_tokens: with --draft: tokens proposed per pass of the model
        ngram: with --draft ngram: the longest n-gram looked up (down to half of it)
    """

    batch_size: int = 16
    device: str | None = None
    compile: Literal["off", "on", "auto"] | bool = "off"
    quantize: Literal["none", "int8"] = "none"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    draft: str | None = None
    draft_tokens: int = 4
    ngram: int = 6
