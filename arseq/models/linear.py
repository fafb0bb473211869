"""The model's linear layer: F.linear, except in the few-row passes of a compiled decode step, where it is
written as a reduction (x * W).sum(-1). Why: at batch 1 a decode step is bound by reading the weights, and
torch.compile (Inductor) turns the reduction into one fused loop that streams W at the memory's speed,
while on CPU it hands F.linear to the BLAS GEMV, measured at ~0.4 of that speed for these shapes (2 idle
cores: ~7.5 vs 17-22 GB/s). int8 weights (arseq.models.quantize) go through the same function, so their dequantization
fuses into that loop and only int8 bytes are read. On CUDA, cuBLAS already reads float weights at full
speed, so float weights keep F.linear there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSED_ROWS = 16  # compiled passes with at most this many rows (decode steps) use the reduction


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T in x's dtype, for float or int8 `weight` (out, in)."""
    rows = x.numel() // x.shape[-1]
    fused = torch.compiler.is_compiling() and rows <= FUSED_ROWS and (x.device.type == "cpu" or weight.dtype == torch.int8)
    w = weight.to(x.dtype)
    return (x.unsqueeze(-2) * w).sum(-1) if fused else F.linear(x, w)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose forward is `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weight)
        return y if self.bias is None else y + self.bias
