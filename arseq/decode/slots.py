"""The KV cache of one model for S slots of L positions, and the passes that read and write it.

A slot holds one row; a row's token at position p sits at cache position p of its slot (rows start at 0 and
slide back to 0 when their window moves), so rows of one pass sit at different positions and a row leaves
or joins by nothing more than its slot being reused. The decode pass feeds every slot T tokens (1, or k + 1
to verify speculative proposals) at each slot's own positions: its shapes depend only on (S, T, L), so it
is compiled once (torch.compile; CUDA graphs on a GPU) and replayed. A prompt is prefilled into its slot
alone, in chunks: a row's prefill never shares a matrix product with another row, whose size would change
its rounding (MKL's results depend on the number of rows), so a row's tokens do not depend on its neighbours.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arseq.models.inference import Compile, compile_mode, compiled
from arseq.models.transformer import KVCache, Transformer

PREFILL_CHUNK = 512  # prompt tokens per prefill pass: bounds the activations of a long prompt


def cached_pass(model: Transformer, tokens: Tensor, pos: Tensor) -> Tensor:
    """Logits (S, T, V) of `tokens` (S, T) at positions `pos` (S, T) of every slot: what torch.compile sees."""
    return model(tokens, pos=pos)


class Slots:
    """`model`'s KV cache for `slots` rows of `length` positions (`spare` more take the padding of a pass of
    several tokens at a row's end), attached while decoding runs."""

    def __init__(self, model: Transformer, slots: int, length: int, compile: Compile = False, spare: int = 0):
        self.model, self.slots, self.length = model, slots, length
        self.device = model.norm.weight.device
        size = length + spare
        mode = compile_mode(compile)
        if mode == "off":
            self.compiled = None
            self.caches: list[KVCache] = model.setup_cache(slots, size)
        else:  # the buffers the compiled pass was built with, cleared
            self.compiled, caches = compiled(model, cached_pass, slots, size, mode, lambda: model.setup_cache(slots, size))
            self.caches = model.setup_cache(slots, size, caches)

    def attach(self) -> None:
        """Put this cache on the model's blocks (a draft and its target each hold their own); a no-op when
        it is there already (nn.Module attribute writes cost ~50 us a block, every step)."""
        attns = self.model.attentions()
        if attns[0].cache is self.caches[0]:
            return
        for attn, cache in zip(attns, self.caches):
            attn.cache = cache

    def run(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Feed every slot tokens (S, T) at positions (S, T); return logits (S, T, V)."""
        return (self.compiled or cached_pass)(self.model, tokens, pos)

    def prefill(self, slot: int, tokens: list[int]) -> None:
        """Write `tokens` at positions 0.. of `slot` (its earlier contents zeroed: a NaN would leak through the mask)."""
        rows = torch.tensor([slot], device=self.device)
        for cache in self.caches:
            cache.clear(rows)
        for a in range(0, len(tokens), PREFILL_CHUNK):
            chunk = torch.tensor([tokens[a : a + PREFILL_CHUNK]], dtype=torch.long, device=self.device)
            pos = torch.arange(a, a + chunk.shape[1], device=self.device)[None]
            self.model(chunk, pos=pos, rows=rows, last_only=True)

    def copy(self, src: int, dst: int) -> None:
        """Slot `dst` becomes a copy of slot `src` (rows with the same prompt: one prefill for all)."""
        for cache in self.caches:
            cache.k[dst] = cache.k[src]
            cache.v[dst] = cache.v[src]

    def close(self) -> None:
        self.model.clear_cache()
