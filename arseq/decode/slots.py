"""The KV cache of one model for S slots of L positions, and the passes that read and write it.

A slot holds one row; a row's token at position p sits at cache position p of its slot (rows start at 0 and
slide back to 0 when their window moves), so rows of one pass sit at different positions and a row leaves
or joins by nothing more than its slot being reused. The decode pass feeds every slot T tokens (1, or k + 1
to verify speculative proposals) at each slot's own positions, and its attention reads the first `span`
slots of every row: the smallest of at most SPANS fixed spans (`spans`) that holds every row's newest
position. Its shapes depend only on (S, T, span), so it is compiled once per span used (torch.compile;
CUDA graphs on a GPU) and replayed. A prompt is prefilled into its slot
alone, in chunks: a row's prefill never shares a matrix product with another row, whose size would change
its rounding (MKL's results depend on the number of rows), so a row's tokens do not depend on its neighbours.
Prefills of the lengths named at construction (a sliding row's window, always the same length) are
compiled too; any other length runs eagerly.

Eager on a CPU, where shapes may change at every step, a pass reads no fixed span: its attention runs over
runs of neighbouring slots (`groups`), each reading as far as its furthest row, so that rows far apart
(continuous batching mixes rows just joined with rows hundreds of tokens in) do not all read as far as the
furthest one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arseq.models.attention import Groups
from arseq.models.inference import Compile, Compiled, compile_mode, compiled
from arseq.models.transformer import KVCache, Transformer

PREFILL_CHUNK = 512  # prompt tokens per prefill pass: bounds the activations of a long prompt
# Spans: powers of two from SPAN_MIN that leave at least a quarter of the cache unread, the largest SPANS - 1 of
# them, then the whole cache; so past the smallest span a step reads at most 8/3 of the slots its rows reach.
# At most SPANS graphs per pass width: a compiled pass has one or two widths (speculative decoding's 1 and
# k + 1), within torch.compile's 8 graphs per code object. Why: the 8-row step of bench_step's model read
# every slot of every row's cache (~40 MB at 272 slots in float32, as much as its weights); reading 128 of
# them (rows at position 100), same-process A/B on the AVX2 host, 1 thread: float32 20.7 -> 15.8 ms (8 rows
# over 1: 2.41 -> 1.95), int8 14.1 -> 11.7 ms (1.69 -> 1.45). Spans of every multiple of 64 would read less
# but compile up to L / 64 graphs (each 20-45 s here) and overrun the recompile limit.
SPAN_MIN, SPANS = 64, 4
# What one more attention call costs, in bytes of keys and values it could have read instead (`groups`).
# Measured on the 2-core AVX-512 host, eager, the 8-row step of bench_engine's model: a call ~12 us, a slot
# of a row's keys and values ~0.13 us a layer (3 KiB: ~24 GB/s), so ~90 slots or ~270 KiB a call.
GROUP_CALL_BYTES = 256 * 1024


def spans(size: int) -> list[int]:
    """The spans a pass over a cache of `size` slots per row may read, ascending (the last is `size`)."""
    powers = [SPAN_MIN << i for i in range(max(size.bit_length(), 1)) if 4 * (SPAN_MIN << i) <= 3 * size]
    return powers[1 - SPANS :] + [size]


def groups(reads: list[int], call: int) -> Groups:
    """Runs of neighbouring rows (first, end, slots read) for a pass where row r reads `reads[r]` slots: the
    partition that reads the fewest slots, counting `call` slots for each run (the cost of one more attention
    call). Rows at similar positions share a run; a row far from its neighbours reads alone. Dynamic
    programming over the run ending at each row: O(rows^2), ~20 us for 8 rows; skipped when one run reads
    at most a call's worth of slots more than every row needs (no cut could save a call)."""
    if len(reads) * max(reads) - sum(reads) <= call:
        return ((0, len(reads), max(reads)),)
    best, cut = [0] + [0] * len(reads), [0] * (len(reads) + 1)
    for end in range(1, len(reads) + 1):
        top, best[end] = 0, -1
        for first in range(end - 1, -1, -1):
            top = max(top, reads[first])
            cost = best[first] + call + (end - first) * top
            if best[end] < 0 or cost < best[end]:
                best[end], cut[end] = cost, first
    runs, end = [], len(reads)
    while end:
        runs.append((cut[end], end, max(reads[cut[end] : end])))
        end = cut[end]
    return tuple(reversed(runs))


def cached_pass(model: Transformer, tokens: Tensor, pos: Tensor, span: int | Groups) -> Tensor:
    """Logits (S, T, V) of `tokens` (S, T) at positions `pos` (S, T) of every slot, reading slots 0..span-1
    (or in runs of rows, eager): what torch.compile sees (a graph per span)."""
    return model(tokens, pos=pos, span=span)


def prefill_pass(model: Transformer, tokens: Tensor, pos: Tensor, rows: Tensor, span: int) -> Tensor:
    """A chunk of one row's prompt (1, T) written at positions `pos` (1, T) of cache row `rows` (1,): what
    torch.compile sees for a prefill of a fixed length (a graph per length)."""
    return model(tokens, pos=pos, rows=rows, span=span, last_only=True)


class Slots:
    """`model`'s KV cache for `slots` rows of `length` positions (`spare` more take the padding of a pass of
    several tokens at a row's end), attached while decoding runs."""

    def __init__(self, model: Transformer, slots: int, length: int, compile: Compile = False, spare: int = 0, prefill_lengths: tuple[int, ...] = ()):
        self.model, self.slots, self.length = model, slots, length
        self.device = model.norm.weight.device
        size = length + spare
        self.spans = spans(size)
        self.widths: dict[int, Tensor] = {}  # T -> arange(T): a pass's offsets from each row's start
        mode = compile_mode(compile)
        self.prefills: dict[int, Compiled] = {}  # prompt lengths prefilled by a compiled pass
        kv = model.norm.weight.element_size() * 2 * model.cfg.d_model  # bytes of a slot's keys and values, a layer
        self.call = GROUP_CALL_BYTES // kv if mode == "off" and self.device.type == "cpu" else None
        if mode == "off":
            self.compiled = None
            self.caches: list[KVCache] = model.setup_cache(slots, size)
        else:  # the buffers the compiled pass was built with, cleared
            self.compiled, caches = compiled(model, cached_pass, slots, size, mode, lambda: model.setup_cache(slots, size))
            self.caches = model.setup_cache(slots, size, caches)
            # Why: a row that outgrows the cache slides (arseq.decode.engine) and its window is prefilled again,
            # once every length / 2 tokens. Eager, that prefill cost as much as 3 compiled 16-row steps (31 tokens
            # of the 4 x 128 text model: 3.1 ms against 0.94 ms, 1 thread), most of it per-op overhead, and sliding
            # rows' prefills took 22 % of the server's engine thread at 16 streams.
            for n in prefill_lengths:
                if 0 < n <= PREFILL_CHUNK:
                    self.prefills[n] = compiled(model, prefill_pass, slots, size, mode, lambda: self.caches, tokens=n, warn=False)[0]

    def attach(self) -> None:
        """Put this cache on the model's blocks (a draft and its target each hold their own); a no-op when
        it is there already (nn.Module attribute writes cost ~50 us a block, every step)."""
        attns = self.model.attentions()
        if attns[0].cache is self.caches[0]:
            return
        for attn, cache in zip(attns, self.caches):
            attn.cache = cache

    def run(self, tokens: Tensor, starts: list[int]) -> Tensor:
        """Feed every slot tokens (S, T) at positions starts[s] .. starts[s] + T - 1; return logits (S, T, V)."""
        T = tokens.shape[1]
        offsets = self.widths.get(T)
        if offsets is None:
            offsets = self.widths[T] = torch.arange(T, device=self.device)
        pos = torch.tensor(starts, device=self.device)[:, None] + offsets
        if self.call is not None:  # eager on a CPU: runs of rows, each reading as far as its furthest row
            runs = groups([s + T for s in starts], self.call)
            return cached_pass(self.model, tokens, pos, runs if len(runs) > 1 else runs[0][2])
        span = next(s for s in self.spans if s >= max(starts) + T)
        return (self.compiled or cached_pass)(self.model, tokens, pos, span)

    def warm(self) -> None:
        """Compile the decode pass for every span now, before any row needs it (on a CPU each graph takes
        seconds: a server compiles before it takes requests, not while they wait). What the passes write is
        never read: a row's prefill clears its slot first."""
        if self.compiled is None:
            return
        tokens = torch.zeros(self.slots, 1, dtype=torch.long, device=self.device)
        for span in self.spans:
            self.run(tokens, [span - 1] * self.slots)
        for n in self.prefills:
            self.prefill(0, [0] * n)

    def prefill(self, slot: int, tokens: list[int]) -> None:
        """Write `tokens` at positions 0.. of `slot` (its earlier contents zeroed: a NaN would leak through the mask)."""
        rows = torch.tensor([slot], device=self.device)
        for cache in self.caches:
            cache.clear(rows)
        run = self.prefills.get(len(tokens)) or prefill_pass  # compiled: a whole prompt of a length named (one chunk)
        for a in range(0, len(tokens), PREFILL_CHUNK):
            chunk = torch.tensor([tokens[a : a + PREFILL_CHUNK]], dtype=torch.long, device=self.device)
            pos = torch.arange(a, a + chunk.shape[1], device=self.device)[None]
            run(self.model, chunk, pos, rows, a + chunk.shape[1])

    def copy(self, src: int, dst: int) -> None:
        """Slot `dst` becomes a copy of slot `src` (rows with the same prompt: one prefill for all)."""
        for cache in self.caches:
            cache.k[dst] = cache.k[src]
            cache.v[dst] = cache.v[src]

    def close(self) -> None:
        self.model.clear_cache()
