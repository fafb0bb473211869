"""A decoder-only transformer: token embedding, rotary positions, pre-norm blocks (RMSNorm), SwiGLU MLPs,
PyTorch's fused scaled-dot-product attention (arseq.models.attention) and an optional static KV cache for sampling.

It knows token ids, a vocabulary size and a maximum sequence length, and nothing about any modality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arseq.models.attention import Groups, attention, grouped_attention
from arseq.models.linear import Linear


@dataclass
class TransformerConfig:
    vocab_size: int
    max_seq_len: int = 256
    n_layer: int = 6
    n_head: int = 6
    d_model: int = 384
    mlp_hidden: int | None = None  # default: 8/3 * d_model rounded up to a multiple of 32 (SwiGLU)
    dropout: float = 0.0  # on embeddings and residual branches
    # On attention probabilities. Off by default: on CPU it pushes SDPA off its fused kernel, which made
    # training steps ~1.7x slower at width 128 (0.62 vs 0.37 s), for a regulariser `dropout` already gives.
    attn_dropout: float = 0.0
    tie_weights: bool = True
    bias: bool = False
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "d_model"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"model.mlp_hidden must be positive, got {self.mlp_hidden}")
        if not (0 <= self.dropout < 1 and 0 <= self.attn_dropout < 1):
            raise ValueError("model.dropout and model.attn_dropout must be in [0, 1)")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"model.d_model {self.d_model} must split into model.n_head {self.n_head} heads of even width")
        if self.vocab_size < 1 or self.max_seq_len < 1:
            raise ValueError("vocab_size and max_seq_len must be positive")
        self.mlp_hidden = self.mlp_width  # written out: checkpoints and exports record the width

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_width(self) -> int:
        """The SwiGLU's hidden width: `mlp_hidden`, else 8/3 * d_model rounded up to a multiple of 32."""
        return self.mlp_hidden if self.mlp_hidden is not None else 32 * math.ceil(8 * self.d_model / 3 / 32)


def rope_tables(cfg: TransformerConfig) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # (max_seq_len, head_dim / 2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) by per-position angles; cos/sin are (T, D/2) or (B, 1, T, D/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class Cached(NamedTuple):
    """What a cached pass tells each layer (built once per pass by Transformer.forward)."""

    pos: Tensor  # (B, T) each token's position: its slot in its row of the cache
    at: Tensor  # (B, 1) the cache rows written
    rows: Tensor | None  # the cache rows read: None for every row in order (the decode pass)
    span: int  # slots 0..span-1 of each row are read: more than any position in `pos`
    groups: Groups | None  # attention in runs of rows that each read their own slots (None: all rows, `span` slots)


class KVCache(nn.Module):
    """Pre-allocated keys and values for every slot a sampling run may reach.

    `update` writes at tensor positions and returns the first `span` slots of every row, so a decode
    step has the same shapes at every position within a span (what torch.compile and CUDA graphs need);
    the attention mask hides the slots not written yet.
    """

    k: Tensor  # (batch, n_head, max_len, head_dim) buffers: declared for the type checker, which reads
    v: Tensor  # a registered buffer as nn.Module.__getattr__'s Tensor | Module

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, c: Cached, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) at each row's positions; return the first `c.span` slots of the rows read
        (B, H, span, D): every row's when `c.rows` is None (the decode pass), else those of `c.rows` (a prefill
        of some slots). An indexed assignment (index_put_), not scatter_: Inductor copies a buffer written by
        scatter_ twice per layer and step, which made 8-row compiled steps twice as slow (bench_step, A/B)."""
        self.k[c.at, :, c.pos] = k.transpose(1, 2).to(self.k.dtype)
        self.v[c.at, :, c.pos] = v.transpose(1, 2).to(self.v.dtype)
        if c.rows is None:
            return self.k[:, :, : c.span], self.v[:, :, : c.span]
        return self.k[c.rows, :, : c.span], self.v[c.rows, :, : c.span]

    def clear(self, rows: Tensor | None = None) -> None:
        """Zero the buffers (or the slots `rows`) for reuse: stale positions are masked out anyway, but a NaN
        left by an earlier row would leak through the mask (0 * NaN)."""
        if rows is None:
            self.k.zero_()
            self.v.zero_()
        else:
            self.k.index_fill_(0, rows, 0)
            self.v.index_fill_(0, rows, 0)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = cfg.n_head, cfg.head_dim, cfg.attn_dropout
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cached: Cached | None, mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        qk = apply_rope(qkv[:2], cos, sin)  # q and k rotated together: half the small eager ops of two calls
        q, k, v = qk[0], qk[1], qkv[2]
        if cached is not None:
            k, v = self.kv_cache().update(cached, k, v)
        # Causal by flag only without a cache (training, scoring): cached passes always bring a mask.
        is_causal = mask is None and T > 1
        if cached is not None and cached.groups is not None and mask is not None:
            y = grouped_attention(q, k, v, mask, cached.groups)
        else:
            y = attention(q, k, v, mask, is_causal, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def kv_cache(self) -> KVCache:
        """The cache a cached pass reads and writes (attached by Transformer.setup_cache)."""
        if self.cache is None:
            raise RuntimeError("a pass at positions `pos` needs a KV cache: call setup_cache first")
        return self.cache


class SwiGLU(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_up = Linear(cfg.d_model, 2 * cfg.mlp_width, bias=cfg.bias)
        self.down = Linear(cfg.mlp_width, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cached: Cached | None, mask: Tensor | None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, cached, mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    rope_cos: Tensor  # (max_seq_len, head_dim / 2) buffers: declared for the type checker, which reads a
    rope_sin: Tensor  # registered buffer as nn.Module.__getattr__'s Tensor | Module

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(
        self, idx: Tensor, *, pos: Tensor | None = None, rows: Tensor | None = None, span: int | Groups | None = None, last_only: bool = False
    ) -> Tensor:
        """Logits (B, T, vocab) for ids (B, T).

        Training and scoring call this with ids alone: a causal pass at positions 0..T-1. Sampling (after
        `setup_cache`) passes `pos` (B, T): each token's position, which is also its slot in its row's KV
        cache, so rows of one pass sit at different places; a query sees its row's slots up to its own.
        `rows` (B,) names the cache rows the batch is (default: all of them, in order). `span`: the slots
        0..span-1 of each row that attention reads (default: all), more than any position in `pos`; the
        decode engine passes one of a few fixed spans (arseq.decode.slots), so that a step reads the slots
        its rows have reached rather than the whole cache, with static shapes per span; or, eager on a CPU,
        `Groups`: runs of rows whose attention reads each run's own slots (a row far behind its neighbours
        then reads its own few, not theirs).
        """
        B, T = idx.shape
        if pos is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds the model's context of {self.cfg.max_seq_len}")
            cos, sin, cached, mask = self.rope_cos[:T], self.rope_sin[:T], None, None
        else:  # positions past the context are padding (never seen by a real token): any rotation will do
            angle = pos.clamp(max=self.cfg.max_seq_len - 1)
            cos, sin = self.rope_cos[angle].unsqueeze(1), self.rope_sin[angle].unsqueeze(1)  # (B, 1, T, D/2)
            groups = span if isinstance(span, tuple) else None
            reach = max(n for _, _, n in span) if isinstance(span, tuple) else span or cast(Block, self.blocks[0]).attn.kv_cache().k.shape[2]
            at = (torch.arange(B, device=idx.device) if rows is None else rows)[:, None]
            cached = Cached(pos, at, rows, reach, groups)
            mask = (torch.arange(reach, device=idx.device)[None, None, :] <= pos[:, :, None]).unsqueeze(1)  # (B, 1, T, span)
        x = self.drop(self.embed(idx))
        for block in self.blocks:
            x = block(x, cos, sin, cached, mask)
        x = self.norm(x[:, -1:] if last_only else x)
        return self.lm_head(x)

    def setup_cache(self, batch: int, max_len: int | None = None, caches: list[KVCache] | None = None) -> list[KVCache]:
        """Attach a KV cache for `batch` rows of `max_len` slots each (default: the context; a little more
        leaves room for the padding of a pass of several tokens near the end of a row).

        `caches` from an earlier call are reused when their shape fits (a compiled pass keeps its
        buffers); the caches attached are returned.
        """
        max_len = max_len or self.cfg.max_seq_len
        dtype, device = self.norm.weight.dtype, self.norm.weight.device  # activations (weights may be int8)
        shape = (batch, self.cfg.n_head, max_len, self.cfg.head_dim)
        if caches is not None and all(c.k.shape == shape and c.k.dtype == dtype and c.k.device == device for c in caches):
            for c in caches:
                c.clear()
        else:
            caches = [KVCache(batch, self.cfg.n_head, max_len, self.cfg.head_dim, dtype, device) for _ in self.blocks]
        for attn, cache in zip(self.attentions(), caches):
            attn.cache = cache
        return caches

    def clear_cache(self) -> None:
        for attn in self.attentions():
            attn.cache = None

    def attentions(self) -> list[Attention]:
        """Each block's attention layer (where its KV cache hangs): typed, as nn.ModuleList's items are not."""
        return [cast(Block, block).attn for block in self.blocks]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
