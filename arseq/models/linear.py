"""The model's linear layer: one function (`linear`) that picks, per call, how to compute x @ W.T from the
device, the weight's dtype, the CPU's features and the number of rows. `rule_route` is the whole rule:

- CUDA: "blas" (cuBLAS) for float weights; int8 takes "reduce" in compiled passes of <= FUSED_ROWS rows.
- CPU with AVX-512 (the host of the README's 2026-12 figures): "reduce", (x * W).sum(-1), in compiled passes
  of <= FUSED_ROWS rows (decode steps, verify passes), which Inductor compiles into one fused loop that streams
  W once per row and fuses int8 dequantization into the read: ~2.5x the BLAS GEMV's read speed for one
  row there, 1082 tokens/s int8 + compiled. "blas" (MKL/oneDNN) otherwise.
- CPU without AVX-512 (AVX2), measured on a 2-core AMD EPYC guest (no AVX-512/VNNI/BF16/AMX), compiled
  decode step of bench_step's 6 x 384 model, one thread, ms at 1 / 2 / 4 / 8 rows / a 5-token verify pass
  (same-process interleaved medians, interquartile spread 11 % of the median; a loaded shared host):
    float32 "reduce"        10.7 / 20.7 / 39.1 / 57.1 / 28.7
    float32 "blas"           9.9 / 13.7 / 25.8 / 45.9 / 21.4   <- kept: MKL's sgemm beats Inductor's loop here
    int8 "reduce"           46.1 / 91.8 / 186  / 358  / 209    (int8 -> float 8 lanes at a time via a partial load)
    int8 "fbgemm_int8"      11.1 / 13.0 / 22.0 / 45.1 / 14.2   <- kept
  "fbgemm_int8" (arseq.models.fbgemm_int8): FBGEMM's int8 x int8 product, the activations quantized per call
  to 7 bits, each row on its own scale (a row's result does not depend on the batch), for compiled int8
  passes of <= FUSED_ROWS rows. The int8 row above used one scale per input; per row costs 9-16 % more (A/B
  in arseq.models.fbgemm_int8). Eager int8 passes and longer compiled ones (prefill, scoring, the perplexity
  `evaluate` reports) take "blas" on the dequantized weights, whose error is the weights' alone (one activation scale over 160 rows had given 3.8 % relative logit error in tests,
  the weights alone 1-2 %). Held-out perplexity through 8-row decode steps (4 x 128 char model, 10,240
  tokens): float32 5.7002, int8 dequantized 5.7013 (+0.02 %), int8 FBGEMM 5.7081 (+0.14 %).
  Most of what an 8-row step costs beyond a 1-row one here is the KV cache, not the matmuls: at cache
  length 32 instead of 272 the 8-row step is 13.2 ms (int8) / 17.5 ms (float32) instead of 33.7 / 34.1.
  Why eager int8 takes "blas" whatever its rows: eagerly, a one-row step dequantizes each layer's weights
  into a buffer that stays in L3 for the sgemm that follows, which then reads 4x fewer bytes from memory
  than float32 does, while FBGEMM pays ~30 us of small eager ops per call. Eager step of bench_generate's
  model, same-process interleaved medians (min), ms at 1 / 8 rows, 1 thread, a loaded host: float32
  10.4 (6.0) / 20.1 (12.0), int8 dequantized + sgemm 9.8 (5.4) / 17.7 (10.9), int8 FBGEMM (its op called
  directly) 10.6 (6.3) / 13.9 (9.4). FBGEMM at 2-16 rows only (the faster choice at each row count) would
  make a row's tokens depend on how many rows share its steps, as would any rule on eager rows: one route
  for every eager decode pass keeps a row's tokens the same alone or in a batch.

Measured and not kept, per layer (same host, 1 thread, interleaved medians; one 2048 x 384 layer at 1 / 8
rows unless said): `torch._int_mm` (a plain loop on CPU: 1.8 / 59 ms), `torch._weight_int8pack_mm` (0.44 /
11.6 ms vs sgemm 0.09 / 0.37), bfloat16 F.linear without AVX512-BF16 (oneDNN converts in software: 0.18 /
12 ms), MKL's packed sgemm (`mkl._mkl_linear`: 0.08 / 0.33 ms, 0.5-1.3x sgemm's speed over the model's shapes
and 1-8 rows, no consistent gain), Inductor's C++ GEMM template (max_autotune + freezing: 1.06 ms at 8 rows vs
1.01 sgemm and 1.51 "reduce", 30-40 s of autotuning per shape; for the 8-row 384 x 1024 layer its autotuner
chose MKL over itself), "reduce" with the rows innermost (1.22 ms at 8 rows: 5-20 % better than "reduce",
still behind sgemm), FBGEMM's fp16-weight GEMM (0.16 / 0.51 ms vs sgemm 0.21 / 0.57 at 2 threads, but not
float32's numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arseq.models import cpu_features
from arseq.models.fbgemm_int8 import int8_product

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
    if cpu_features.has("avx512"):
        return "reduce" if few else "blas"
    if weight_dtype == torch.int8:
        if scaled and few and cpu_features.fbgemm_int8():
            return "fbgemm_int8"  # compiled only: eagerly the dequantized sgemm is faster at one row (above)
        return "reduce" if few else "blas"
    return "blas"


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
    if how == "fbgemm_int8" and scale is not None:  # the route is taken for scaled int8 weights only
        return int8_product(x, weight, scale, owner)
    w = weight.to(x.dtype)
    y = (x.unsqueeze(-2) * w).sum(-1) if how == "reduce" else F.linear(x, w)
    return y if scale is None else y * scale.to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward is `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weight)
        return y if self.bias is None else y + self.bias
