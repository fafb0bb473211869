"""The model's linear layer: one function (`linear`) that picks, per call, how to compute x @ W.T from the
device, the weight's dtype, the CPU's features and the number of rows. `route` is the whole rule:

- "blas": F.linear (cuBLAS, MKL/oneDNN). Always on CUDA for float weights, and on CPU outside compiled
  few-row passes (training, prefill, scoring, eager decoding).
- "reduce": (x * W).sum(-1), which Inductor compiles into one fused loop that streams W once per row and
  fuses int8 dequantization into the read (only int8 bytes are read). Compiled passes of at most
  FUSED_ROWS rows on CUDA (int8) and on a CPU with AVX-512 (the host the README's figures came from:
  ~2.5x the BLAS GEMV's read speed for one row, 1082 tokens/s int8 + compiled).
- "fbgemm_int8": int8 weights on a CPU *without* AVX-512 where FBGEMM runs (AVX2), passes of at most
  FUSED_ROWS rows, eager and compiled (arseq.models.fbgemm_int8). Longer passes (prefill, scoring, the
  perplexity `evaluate` reports) keep "blas" on the dequantized weights: FBGEMM quantizes a whole input to
  7 bits with one scale, 3.8 % relative logit error over 160 rows in tests vs 1-2 % for the weights alone. Measured on a 2-core AVX2 host (AMD EPYC, no AVX-512/VNNI/
  AMX): Inductor's reduction converts int8 to float 8 lanes at a time through a partial load, so one
  2048 x 384 int8 layer took 1744 us for one row vs 257 us for the same loop over float32 weights, and
  23.7 ms for 8 rows (1 thread); FBGEMM's integer product took 85 us / 408 us (float32 sgemm 81 / 608 us).

Measured and not kept (same host, same-process interleaved A/B, medians; figures in benchmarks/bench_step.py's
JSON and the README): `torch._int_mm` on CPU (a plain loop: 1.8 ms / 59 ms for the layer above),
`torch._weight_int8pack_mm` (0.25-16 ms, 3-50x float32), bfloat16 F.linear without AVX512-BF16 (oneDNN
converts in software: 2-40x float32), MKL's packed sgemm (`mkl._mkl_linear`: 0.8-2x sgemm, no consistent
gain over 1-8 rows), FBGEMM's fp16-weight GEMM (1.0-1.3x sgemm's speed but not float32's numbers).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arseq.models import cpu_features
from arseq.models.fbgemm_int8 import int8_linear

FUSED_ROWS = 16  # compiled passes with at most this many rows (decode steps, verify passes) may take "reduce"
ROUTES = ("blas", "reduce", "fbgemm_int8")
_forced: str | None = None


@contextlib.contextmanager
def forced_route(name: str | None) -> Iterator[None]:
    """Within the block, `route` answers `name` wherever that route applies (benchmarks compare routes this
    way; a graph keeps the route it was traced with). None: the rule."""
    global _forced
    if name is not None and name not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {name!r}")
    before, _forced = _forced, name
    try:
        yield
    finally:
        _forced = before


def rule_route(device: str, weight_dtype: torch.dtype, scaled: bool, rows: int, compiling: bool) -> str:
    """The rule (see the module docstring for the figures): for a product on `device` ("cpu", "cuda", ...)
    with weights of `weight_dtype` (`scaled`: int8 with a per-channel scale) over `rows` rows, in a pass
    being compiled or not."""
    few = compiling and rows <= FUSED_ROWS
    if device != "cpu":
        return "reduce" if few and weight_dtype == torch.int8 else "blas"
    if (weight_dtype == torch.int8 and scaled and rows <= FUSED_ROWS and cpu_features.fbgemm_int8()
            and not cpu_features.has("avx512")):
        return "fbgemm_int8"  # eager too: eager and compiled decoding then make the same choices
    return "reduce" if few else "blas"


def route(x: Tensor, weight: Tensor, scale: Tensor | None = None) -> str:
    """How `linear` computes x @ weight.T here: the rule, or the route forced (where it applies)."""
    rows, compiling = x.numel() // x.shape[-1], torch.compiler.is_compiling()
    if _forced == "fbgemm_int8":
        if x.device.type == "cpu" and weight.dtype == torch.int8 and scale is not None and cpu_features.fbgemm_int8():
            return _forced
    elif _forced == "reduce" and compiling and rows <= FUSED_ROWS or _forced == "blas":
        return _forced
    return rule_route(x.device.type, weight.dtype, scale is not None, rows, compiling)


def linear(x: Tensor, weight: Tensor, scale: Tensor | None = None, owner: int = 0) -> Tensor:
    """x @ weight.T in x's dtype, for float or int8 `weight` (out, in); times `scale` (out,) when given
    (int8 weights' per-channel scale). `owner` names the module whose weight it is (FBGEMM's pack)."""
    how = route(x, weight, scale)
    if how == "fbgemm_int8":
        return int8_linear(x, weight, scale, owner)
    w = weight.to(x.dtype)
    y = (x.unsqueeze(-2) * w).sum(-1) if how == "reduce" else F.linear(x, w)
    return y if scale is None else y * scale.to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward is `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weight)
        return y if self.bias is None else y + self.bias

