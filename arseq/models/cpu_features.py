"""What this CPU's matrix units can do, asked once: the few facts the linear layer's route rule needs
(arseq.models.linear, arseq.models.quantize) and `--dtype bfloat16` (arseq.models.inference).

torch's own probes (cpuinfo, so they work without /proc) answer first; /proc/cpuinfo's flags are the
fallback on a build without them. `ARSEQ_CPU_FEATURES` (comma-separated names, e.g. "avx2" or "" for
none) overrides detection: a test, or a user whose hypervisor reports flags its CPU does not honour,
can pretend to a smaller machine and get the fallbacks.
"""

from __future__ import annotations

import functools
import os

import torch

# name -> (torch.cpu probe, /proc/cpuinfo flags of which any one means yes)
_PROBES: dict[str, tuple[str, tuple[str, ...]]] = {
    "avx2": ("_is_avx2_supported", ("avx2",)),
    "fma": ("", ("fma",)),
    "avx512": ("_is_avx512_supported", ("avx512f",)),
    "avx512_bf16": ("_is_avx512_bf16_supported", ("avx512_bf16",)),
    "vnni": ("_is_vnni_supported", ("avx512_vnni", "avx_vnni")),
    "amx": ("_is_amx_tile_supported", ("amx_tile",)),
}
FEATURES = tuple(_PROBES)


@functools.cache
def _proc_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _detect() -> frozenset[str]:
    forced = os.environ.get("ARSEQ_CPU_FEATURES")
    if forced is not None:
        return frozenset(name.strip() for name in forced.split(",") if name.strip() in _PROBES)
    found = set()
    for name, (probe, flags) in _PROBES.items():
        fn = getattr(torch.cpu, probe, None) if probe else None
        try:
            has = bool(fn()) if fn is not None else bool(_proc_flags() & set(flags))
        except RuntimeError:
            has = bool(_proc_flags() & set(flags))
        if has:
            found.add(name)
    return frozenset(found)


# Asked once at import, kept as plain constants: the route rule runs while torch.compile traces a pass,
# which reads constants but will not call torch's probes. Tests replace FOUND to play a smaller CPU.
FOUND: frozenset[str] = _detect()
FBGEMM_BUILT: bool = "fbgemm" in torch.backends.quantized.supported_engines


def _fbgemm_ops() -> bool:
    # The quantized-tensor API these ops take is deprecated in torch 2.13: a build without them falls back.
    try:
        return all((torch.ops.quantized.linear_prepack, torch.ops.quantized.linear_dynamic, torch._make_per_channel_quantized_tensor))
    except (AttributeError, RuntimeError):
        return False


FBGEMM_BUILT = FBGEMM_BUILT and _fbgemm_ops()


def features() -> frozenset[str]:
    """The names of FEATURES this CPU has (or ARSEQ_CPU_FEATURES says it has)."""
    return FOUND


def has(name: str) -> bool:
    if name not in _PROBES:
        raise ValueError(f"unknown CPU feature {name!r}; one of {', '.join(FEATURES)}")
    return name in FOUND


def native_bf16() -> bool:
    """bfloat16 products in hardware (AVX512-BF16 or AMX): oneDNN then multiplies bf16 at >= float32's
    rate. Without it oneDNN converts in software, measured 2-40x slower than float32 here (AVX2 host)."""
    return has("avx512_bf16") or has("amx")


def fbgemm_int8() -> bool:
    """FBGEMM's int8 x int8 -> int32 kernels (AVX2 or AVX-512 with VNNI) are in this build and usable here."""
    return FBGEMM_BUILT and has("avx2")


def describe() -> dict[str, object]:
    """For benchmarks' JSON: torch's vector capability and the features found."""
    return {"capability": torch.backends.cpu.get_cpu_capability(), "features": sorted(features())}
