"""Inference settings shared by `generate` and `evaluate`: the compiled decode step, the dtype, and
int8 weights (arseq.models.quantize), applied to a loaded model in one call (`prepare_for_inference`).

A compiled pass (the decode step; speculative decoding's row passes) is built once per (model, batch,
cache length, dtype, device) and kept together with its KV cache buffers: later batches of the same run
replay it (a CUDA graph needs fixed addresses).
"""

from __future__ import annotations

import logging
import types
import weakref
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from arseq.errors import first_line
from arseq.models import cpu_features
from arseq.models.quantize import quantize_model
from arseq.models.transformer import KVCache, Transformer

log = logging.getLogger(__name__)

Compile = bool | Literal["off", "on", "auto"]
COMPILE_CHOICES = ("off", "on", "auto")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# model -> {(fn, batch, cache_len, dtype, device, mode): (compiled fn, caches)}; entries go with their model
_COMPILED: weakref.WeakKeyDictionary[Transformer, dict[tuple, tuple[Compiled, list[KVCache]]]] = weakref.WeakKeyDictionary()


def compile_mode(value: Compile | str) -> str:
    """True/False (also as the strings a bare `--compile` or a YAML `true` give) or "on"/"off"/"auto" -> one of
    COMPILE_CHOICES."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value is True or value is False:
        return "on" if value else "off"
    if value not in COMPILE_CHOICES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_CHOICES)}, got {value!r}")
    return value


class Compiled:
    """`fn` through torch.compile. A call that compiles (the first, and any later one with a new shape,
    as the speculative passes of two widths) turns a failure into one line, or into one warning line and
    eager `fn` from then on when `fallback` (compile="auto")."""

    def __init__(self, fn: Callable[..., Tensor], device: torch.device, fallback: bool, warn: bool = True):
        self.eager, self.device, self.fallback, self.warn = fn, device, fallback, warn
        # torch.compile keeps graphs per code object, at most 8 (recompile_limit, then a hard failure with
        # fullgraph): a copy with its own code object gives each pass its own one or two graphs, whatever
        # other models and shapes a process compiles, and a shorter list of guards to check per call.
        self.own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        # CUDA: CUDA graphs replay the whole pass in one launch. CPU: the graph's wrapper in C++ instead of
        # Python (its ~50 buffer allocations and checks per call): 5-31 % more tokens/s at batch 1 in
        # same-process A/B runs. dynamic=False: one graph per shape, no symbolic sizes (a static pass is the point).
        # Not kept: Inductor's freezing (weights folded in as constants and pre-packed for MKL): 8.40 -> 8.17 ms
        # at 1 row, 18.35 -> 16.63 ms at 8 (bench_step's model, span 128, one A/B on the loaded AVX2 host,
        # within its spread), while a frozen graph would go on decoding with the weights it was built with
        # after the model is trained further or loaded again (graphs are kept per model object).
        self.how = {"mode": "reduce-overhead"} if device.type == "cuda" else {"options": {"cpp_wrapper": True}}
        self.fn: Callable[..., Tensor] | None = None

    def __call__(self, *args: object) -> Tensor:
        try:
            if self.fn is None:
                self.fn = torch.compile(self.own, dynamic=False, fullgraph=True, **self.how)
            return self.fn(*args)
        except Exception as e:  # noqa: BLE001 - whatever stops the compiler (no C++ compiler, no Triton ...)
            if self.fn is self.eager:
                raise
            if not self.fallback:
                raise ValueError(
                    f"--compile: torch.compile does not work on {self.device} ({first_line(e)}); use --compile off, or auto to fall back"
                ) from None
            if self.warn:
                log.warning(f"warning: --compile auto: torch.compile does not work on {self.device} ({first_line(e)}); decoding eagerly")
            self.fn = self.eager
            return self.fn(*args)


def compiled(
    model: Transformer,
    fn: Callable[..., Tensor],
    batch: int,
    cache_len: int,
    mode: str,
    caches: Callable[[], list[KVCache]],
    tokens: int = 1,
    warn: bool = True,
) -> tuple[Compiled, list[KVCache]]:
    """`fn` compiled for `model` at (batch, cache length, tokens a pass: a prefill's fixed length), with the
    KV cache buffers it was built with (made by `caches` the first time): one entry per model, function,
    shape, dtype, device and mode. `warn`: whether falling back to eager (mode "auto") says so (a pass beside
    another that says it for both does not)."""
    p = model.norm.weight
    key = (fn, batch, cache_len, tokens, p.dtype, p.device, mode)
    entries = _COMPILED.setdefault(model, {})
    if key not in entries:
        entries[key] = (Compiled(fn, p.device, fallback=mode == "auto", warn=warn), caches())
    return entries[key]


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """--dtype: float32 on CPU and bfloat16 on a GPU that supports it by default; refuse what the device lacks.

    bfloat16 on a CPU is taken where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX, which oneDNN
    uses); elsewhere it falls back to float32 with one warning line: oneDNN then converts in software,
    measured 2-40x slower than float32 per linear layer on an AVX2 host, for no gain in quality."""
    if name is None:
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    dtype = DTYPES[name]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} does not support bfloat16; use float16 or float32")
    if dtype is torch.bfloat16 and device.type == "cpu" and not (cpu_features.native_bf16() and _cpu_runs(dtype)):
        log.warning("--dtype bfloat16: this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX); using float32")
        return torch.float32
    if dtype is torch.float16 and device.type == "cpu" and not _cpu_runs(dtype):
        raise ValueError("--dtype float16: this CPU build cannot compute in float16; use float32")
    return dtype


def _cpu_runs(dtype: torch.dtype) -> bool:
    """Whether a matmul in `dtype` runs on this CPU build (kernels exist in every recent one)."""
    try:
        torch.ones(2, 2, dtype=dtype) @ torch.ones(2, 2, dtype=dtype)
        return True
    except RuntimeError:
        return False


def prepare_for_inference(
    model: Transformer,
    device: str | torch.device,
    dtype: str | None = None,
    quantize: str = "none",
    compile: Compile | str = False,  # the CLI's string too: checked by compile_mode
) -> Transformer:
    """Check --compile, quantize (--quantize), move to `device` in `dtype` (--dtype): the CLI's one call
    before sampling or scoring."""
    compile_mode(compile)
    device = torch.device(device)
    chosen = resolve_dtype(dtype, device)
    quantize_model(model, quantize)
    return model.to(device=device, dtype=chosen).eval()
