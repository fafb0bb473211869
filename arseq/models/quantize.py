"""int8 weight quantization: every linear layer and the embedding keep int8 weights with one float
scale per output channel (per token row for the embedding); the model's activations stay in its dtype.

A tied embedding / lm_head shares one int8 matrix and one scale vector: a token row's scale serves
both the lookup and that token's logit. Why our own lines: torchao (`quantize_(m, int8_weight_only())`),
the well-kept implementation, is not installed in arseq's environment and would be a heavy dependency
for two small modules; `torch.ao.quantization.quantize_dynamic` replaces modules wholesale and runs on
CPU only. The product itself is chosen by arseq.models.linear's rule: on CUDA and on AVX-512 CPUs the
dequantizing matmul, which a compiled decode step fuses into the weight read (only int8 bytes are read:
the point of int8 at batch 1); on an AVX2 CPU, FBGEMM's int8 x int8 product with the activations
quantized per call (arseq.models.fbgemm_int8), because Inductor's int8 loop is 7x slower than its float32
one there. `torch._weight_int8pack_mm` measured 3-50x slower than float32 F.linear (1-8 rows, AVX2 host;
~100x for one row on the AVX-512 host), `torch._int_mm` is a plain loop on CPU (~100x).
"""

from __future__ import annotations

from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arseq.models.fbgemm_int8 import owner_id
from arseq.models.linear import linear

SCHEMES = ("none", "int8")


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row of (out, in) `w`: (int8 weights, float32 scales) with w ~= q * scale[:, None]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _frozen(t: Tensor) -> nn.Parameter:
    # Parameters, not buffers: `.to(device)` keeps a tied embedding/lm_head pair one tensor, and
    # `.to(dtype)` converts the float scales but leaves int8 alone.
    return nn.Parameter(t, requires_grad=False)


class Int8Linear(nn.Module):
    def __init__(self, weight: nn.Parameter, scale: nn.Parameter, bias: Tensor | None):
        super().__init__()
        self.weight, self.scale = weight, scale
        self.bias = None if bias is None else _frozen(bias.detach().clone())
        self.owner = owner_id(self)  # names this layer's FBGEMM pack (arseq.models.fbgemm_int8)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # a copy or pickle packs its own weights again when it first needs them
        for key in ("_fbgemm_pack", "_fbgemm_owner", "owner"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.owner = owner_id(self)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_rows(linear.weight)
        return cls(_frozen(q), _frozen(scale.to(linear.weight.dtype)), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weight, self.scale, self.owner)  # the route: arseq.models.linear
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, int8"


class Int8Embedding(nn.Module):
    def __init__(self, weight: nn.Parameter, scale: nn.Parameter):
        super().__init__()
        self.weight, self.scale = weight, scale

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        q, scale = quantize_rows(embedding.weight)
        return cls(_frozen(q), _frozen(scale.to(embedding.weight.dtype)))

    def forward(self, idx: Tensor) -> Tensor:
        return F.embedding(idx, self.weight).to(self.scale.dtype) * self.scale[idx].unsqueeze(-1)


def scheme_of(model: nn.Module) -> str:
    return "int8" if any(isinstance(m, (Int8Linear, Int8Embedding)) for m in model.modules()) else "none"


M = TypeVar("M", bound=nn.Module)


def quantize_model(model: M, scheme: str) -> M:
    """Replace the model's linear layers and embedding in place ("none": leave it; already int8: no-op)."""
    if scheme not in SCHEMES:
        raise ValueError(f"--quantize must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "none" or scheme_of(model) == scheme:
        return model
    head, embed = getattr(model, "lm_head", None), getattr(model, "embed", None)
    tied = head is not None and embed is not None and head.weight is embed.weight
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not (tied and child is head):
                setattr(parent, name, Int8Linear.from_linear(child))
            elif isinstance(child, nn.Embedding):
                setattr(parent, name, Int8Embedding.from_embedding(child))
    if tied:  # one int8 matrix, one scale per token, for both ends
        embed = cast(Int8Embedding, model.embed)  # replaced above (nn.Module's attributes are untyped)
        model.lm_head = Int8Linear(embed.weight, embed.scale, None)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters a forward pass reads (a tied matrix once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() yields a tied one once
