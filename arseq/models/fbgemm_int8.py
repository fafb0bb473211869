"""int8 x int8 products on a CPU through FBGEMM (inside torch: `quantized::linear_dynamic`), for int8
weights (arseq.models.quantize) where Inductor's own int8 loop is slow.

Each call quantizes the activations to uint8 (one scale for the whole (rows, in) input, chosen from its
range: FBGEMM's dynamic quantization), multiplies them by the int8 weights with integer instructions
(AVX2 `vpmaddubsw`, or VNNI), accumulates in int32 and rescales to float by the activation scale times
each output channel's weight scale. The weights are packed once into FBGEMM's blocked layout and kept
with the module that owns them; the pack is rebuilt when the weights move or change.

It is a custom op (`arseq::int8_linear`), so torch.compile keeps it as one opaque call inside a compiled
decode step (the packed weights are a C++ object a graph cannot hold): the owner is named by an int.
"""
from __future__ import annotations

import itertools
import warnings
import weakref

import torch
from torch import Tensor, nn

_OWNERS: weakref.WeakValueDictionary[int, nn.Module] = weakref.WeakValueDictionary()
_NEXT = itertools.count(1)


def owner_id(module: nn.Module) -> int:
    """A process-unique int for `module` (the key its pack is found by), made on first use."""
    ident = module.__dict__.get("_fbgemm_owner")
    if ident is None:
        ident = module.__dict__["_fbgemm_owner"] = next(_NEXT)
        _OWNERS[ident] = module
    return ident


def _pack(q: Tensor, scale: Tensor) -> object:
    with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors (cpu_features checks they exist)
        warnings.simplefilter("ignore", UserWarning)
        channels = torch._make_per_channel_quantized_tensor(
            q, scale.detach().double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(channels, None)


def packed(q: Tensor, scale: Tensor, owner: int) -> object:
    """The owner's FBGEMM pack of (q, scale), rebuilt when either tensor is another one or was written."""
    module = _OWNERS.get(owner)
    key = (q.data_ptr(), q.shape, q._version, scale.data_ptr(), scale._version, scale.dtype)
    cached = None if module is None else module.__dict__.get("_fbgemm_pack")
    if cached is not None and cached[0] == key:
        return cached[1]
    pack = _pack(q, scale)
    if module is not None:
        module.__dict__["_fbgemm_pack"] = (key, pack)
    return pack


@torch.library.custom_op("arseq::int8_linear", mutates_args=())
def int8_linear(x: Tensor, q: Tensor, scale: Tensor, owner: int) -> Tensor:
    """x (..., in) float times int8 q (out, in) with per-output `scale`: (..., out) in x's dtype."""
    flat = x.reshape(-1, x.shape[-1]).float().contiguous()
    # reduce_range: 7-bit activations, so that AVX2's vpmaddubsw (pairs of u8 x s8 summed into int16)
    # cannot saturate; FBGEMM's own default for this reason.
    y = torch.ops.quantized.linear_dynamic(flat, packed(q, scale, owner), True)
    return y.reshape(*x.shape[:-1], q.shape[0]).to(x.dtype)


@int8_linear.register_fake
def _(x: Tensor, q: Tensor, scale: Tensor, owner: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], q.shape[0])
