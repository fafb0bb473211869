"""Per-row random numbers as a pure function of (seed, counter, stream, lane).

Why not torch.Generator: a generator per row means one multinomial call per row per step (Python work that
grows with the batch, and a kernel launch each on a GPU) and cannot live inside a CUDA graph. A counter-based
hash gives every row its own stream from two integer tensors, drawn for all rows in a few tensor operations,
identical on every device, and a row's draws never depend on the rows beside it. The mixer is Chris Wellons'
`lowbias32` (a 32-bit integer hash with near-ideal avalanche); multiplications are split into 16-bit halves so
int64 arithmetic never overflows.
"""
from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
TOKEN, ACCEPT, DRAFT = 0x1B873593, 0x5BD1E995, 0x68E31DA4  # streams: token draws, speculative acceptance, draft proposals


def _mul(x: Tensor, c: int) -> Tensor:
    """x * c mod 2^32 for x in [0, 2^32), without leaving int64's range."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def mix(x: Tensor) -> Tensor:
    """lowbias32 on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform(seed: Tensor, counter: Tensor, stream: int, lanes: int) -> Tensor:
    """(..., lanes) uniforms in (0, 1) for int64 `seed` and `counter` of the same shape (...)."""
    key = mix(mix((seed >> 32) & _M32 ^ stream) ^ (seed & _M32))
    key = mix(key ^ (counter & _M32))
    lane = mix(torch.arange(lanes, device=seed.device, dtype=torch.int64) + 0x9E3779B9 & _M32)
    bits = mix(mix(key[..., None] ^ lane) + 0x632BE5AB & _M32)
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))
