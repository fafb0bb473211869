"""A KV cache whose rows advance at their own pace, for speculative decoding.

Every pass still writes all rows at the same cache slots (`input_pos` is shared, as in
arseq.models.decoding), but each row keeps a bitmap of the slots that hold its tokens: a row that fed
fewer tokens (right-aligned, the rest are holes), or whose draft tokens were rejected, just marks those
slots invalid, and the attention mask hides them. Rotary positions are per row (a row's tokens count
from its own window start), so a row reads exactly the keys it would have alone. When the slots run
out the cache is compacted (each row's valid slots gathered to the front, order kept).

Shapes are static as in plain decoding (the whole buffer, a full-width mask), so with `compile` the
one-token pass and the `width`-token pass (shorter feeds are padded with holes to it) are compiled once
and replayed; longer feeds (the prompt, a slid window) run eagerly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from arseq.models.inference import Compile, compile_mode, compiled
from arseq.models.transformer import KVCache, Transformer


def cached_pass(model: Transformer, tokens: Tensor, input_pos: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
    """Logits (B, T, V) of `tokens` (B, T) written at cache slots `input_pos` (T,): what torch.compile sees."""
    return model(tokens, input_pos=input_pos, positions=positions, mask=mask)


class RowCache:
    """Per-row bookkeeping over a static KV cache attached to `model`: `fed[i]` tokens of row i's
    sequence are in the cache, those from `start[i]` on (its window: position = index - start), after
    the row's first `head[i]` tokens where a slide kept them (positions 0..head-1: see `restart`)."""

    def __init__(self, model: Transformer, batch: int, slots: int, pad_id: int = 0, compile: Compile = False, width: int = 1):
        self.model, self.pad_id, self.slots, self.width = model, pad_id, slots, width
        cfg = model.cfg
        dtype, self.device = model.norm.weight.dtype, model.norm.weight.device

        def build() -> list[KVCache]:  # not setup_cache: slots may exceed the context (holes use slots, not positions)
            return [KVCache(batch, cfg.n_head, slots, cfg.head_dim, dtype, self.device) for _ in model.blocks]

        mode = compile_mode(compile)
        if mode == "off":
            self.caches, self.compiled = build(), None
        else:  # the buffers the compiled passes were built with, cleared
            self.compiled, self.caches = compiled(model, cached_pass, batch, slots, mode, build)
            for cache in self.caches:
                cache.clear()
        for block, cache in zip(model.blocks, self.caches):
            block.attn.cache = cache
        self.valid = torch.zeros(batch, slots, dtype=torch.bool, device=self.device)
        self.slot_ids = torch.arange(slots, device=self.device)
        self.slot = 0  # the next free slot (shared by all rows)
        self.fed = [0] * batch
        self.start = [0] * batch
        self.head = [0] * batch  # tokens of the sequence's start kept in front of the window
        self.pending = [0] * batch  # of those, still to feed

    def _pass(self, tokens: Tensor, input_pos: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        static = self.compiled is not None and tokens.shape[1] in (1, self.width)
        return (self.compiled if static else cached_pass)(self.model, tokens, input_pos, positions, mask)

    @property
    def context(self) -> int:
        return self.model.cfg.max_seq_len

    def feed(self, seqs: list[list[int]], active: list[bool]) -> Tensor:
        """Feed each active row's tokens not yet in the cache (right-aligned; other rows feed holes) and
        return logits (B, T, vocab): column T-1 is every active row's newest token."""
        cols = [s[:p] + s[f:] if a else [] for s, f, p, a in zip(seqs, self.fed, self.pending, active)]
        T = max(1, max(len(c) for c in cols))
        if T == 1 and all(cols) and self.slot < self.slots:
            return self._step([c[0] for c in cols])
        if self.compiled is not None and 1 < T < self.width:
            T = self.width  # holes in front: the compiled shape
        if self.slot + T > self.slots:
            self.compact()
            if self.slot + T > self.slots:
                raise RuntimeError(f"speculative decoding: {T} tokens do not fit the {self.slots}-slot cache")
        tokens, positions = [], []
        for i, c in enumerate(cols):
            hole = T - len(c)
            first = self.fed[i] - self.start[i] - self.pending[i]
            if first + len(c) > self.context:
                raise RuntimeError("speculative decoding: a row ran past the model's context")
            tokens.append([self.pad_id] * hole + c)
            positions.append([0] * hole + list(range(first, first + len(c))))
            self.fed[i] += len(c) - self.pending[i]
            self.pending[i] = 0
        tok = torch.tensor(tokens, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        end = self.slot + T
        input_pos = torch.arange(self.slot, end, device=self.device)
        if all(len(c) == T for c in cols):
            self.valid[:, self.slot : end] = True
        else:
            self.valid[:, self.slot : end] = torch.tensor([[j >= T - len(c) for j in range(T)] for c in cols], device=self.device)
        slots = self.slot_ids
        mask = (slots[None, :] <= input_pos[:, None])[None] & self.valid[:, None, :]  # (B, T, slots)
        mask |= (slots[None, :] == input_pos[:, None])[None]  # holes see themselves: no empty softmax rows
        self.slot = end
        return self._pass(tok, input_pos, pos, mask[:, None])

    def _step(self, tokens: list[int]) -> Tensor:
        """`feed` of one token per row: the decode step, with as little bookkeeping as possible."""
        slot = self.slot
        positions = [[f - s] for f, s in zip(self.fed, self.start)]
        if max(positions)[0] >= self.context:
            raise RuntimeError("speculative decoding: a row ran past the model's context")
        self.fed = [f + 1 for f in self.fed]
        self.valid[:, slot] = True
        self.slot = slot + 1
        tok = torch.tensor([[t] for t in tokens], device=self.device)
        pos = torch.tensor(positions, device=self.device)
        return self._pass(tok, torch.arange(slot, slot + 1, device=self.device), pos, self.valid[:, None, None, :])

    def rollback(self, keep: list[int]) -> None:
        """Row i keeps only the first keep[i] tokens of its sequence (the rest were rejected)."""
        drop = [max(0, f - k) for f, k in zip(self.fed, keep)]
        if not any(drop):
            return
        n = torch.tensor(drop, device=self.device)[:, None]
        after = self.valid.flip(1).cumsum(1).flip(1)  # valid slots at or after each slot, per row
        self.valid &= ~(after <= n)
        self.fed = [f - d for f, d in zip(self.fed, drop)]

    def restart(self, row: int, start: int, head: int = 0) -> None:
        """Slide row's window to begin at index `start`: its tokens are fed again from there, the first
        `head` of them replaced by the sequence's first `head` (as plain `generate` keeps a prompt's head)."""
        self.valid[row] = False
        self.start[row] = start
        self.fed[row] = start + head
        self.head[row] = self.pending[row] = head

    def window(self, row: int, seq: list[int]) -> list[int]:
        """The tokens row's window holds (or will, once fed)."""
        h = self.head[row]
        return seq[:h] + seq[self.start[row] + h :]

    def compact(self) -> None:
        """Gather each row's valid slots to the front (holes first, in front of shorter rows), freeing the rest."""
        counts = self.valid.sum(1)
        width = int(counts.max())
        key = torch.where(self.valid, self.slot_ids[None, :], -1)
        order = key.sort(dim=1).values[:, self.slots - width :]  # (B, width): invalid (-1) first, then slots in order
        valid = order >= 0
        index = order.clamp(min=0)
        for cache in self.caches:
            for buf in (cache.k, cache.v):
                gathered = buf.gather(2, index[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[3]))
                buf[:, :, :width] = gathered
                buf[:, :, width:] = 0
        self.valid.zero_()
        self.valid[:, :width] = valid
        self.slot = width

    def close(self) -> None:
        self.model.clear_cache()
