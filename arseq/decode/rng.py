"""Per-row random numbers as a pure function of (seed, counter, stream, lane).

Why not torch.Generator: a generator per row means one multinomial call per row per step (Python work that
grows with the batch, and a kernel launch each on a GPU) and cannot live inside a CUDA graph. A counter-based
hash gives every row its own stream: each row's key is hashed on the host from its seed and counter (a few
integer operations per row), and the (rows, lanes) uniforms come from one hash of key ^ lane on the device,
identical on every device; a row's draws never depend on the rows beside it. The mixer is a 32-bit integer
hash from Chris Wellons' hash prospector (multipliers below 2^31, so int64 products of 32-bit values never
overflow).
"""

from __future__ import annotations

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
_A, _B = 0x21F0AAAD, 0x735A2D97
TOKEN, ACCEPT, DRAFT = 0x1B873593, 0x5BD1E995, 0x68E31DA4  # streams: token draws, speculative acceptance, draft proposals


def _mix_int(x: int) -> int:
    x ^= x >> 16
    x = (x * _A) & _M32
    x ^= x >> 15
    x = (x * _B) & _M32
    return x ^ (x >> 15)


def _mix(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = (x * _A) & _M32
    x = x ^ (x >> 15)
    x = (x * _B) & _M32
    return x ^ (x >> 15)


def keys(seeds: list[int], counters: list[int], stream: int) -> list[int]:
    """Each row's 32-bit key for its `counter`-th draw of `stream`."""
    return [_mix_int(_mix_int(_mix_int(_mix_int(stream ^ (s >> 32) & _M32) ^ s & _M32) ^ c & _M32)) for s, c in zip(seeds, counters)]


_LANES: dict[tuple[int, torch.device], Tensor] = {}


def uniform(key: list[int], lanes: int, device: torch.device) -> Tensor:
    """(len(key), lanes) uniforms in (0, 1): lane j of row i from key[i] and j."""
    lane = _LANES.get((lanes, device))
    if lane is None:
        lane = _LANES[(lanes, device)] = _mix(torch.arange(lanes, dtype=torch.int64, device=device) * 0x9E3779B1 & _M32)
    bits = _mix(torch.tensor(key, dtype=torch.int64, device=device)[:, None] ^ lane)
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))
