"""Start a new training run from existing weights (`arseq train --init-from PATH`): fine-tuning.

The source is an arseq checkpoint or run folder, an arseq export (either format) or a Hugging Face
Llama-family folder. Only weights are taken: the optimizer, schedule and step count start afresh (resuming
the same run is `--ckpt_path`). An arseq source also gives its tokenizer, so that token ids keep their
meaning. Files are read with `torch.load(weights_only=True)` or safetensors: loading never runs code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from arseq.artifacts.checkpoint import Parts, read_parts
from arseq.modalities import DataError, Modality
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.tokenizers.base import Tokenizer

# The settings the weights fix (vocab_size aside, see --init-from-resize-vocab). The context length is free:
# RoPE has no learned positions, so a model may be fine-tuned at another block_size.
STRUCTURE = ("n_layer", "n_head", "d_model", "mlp_hidden", "tie_weights", "bias", "rope_base", "norm_eps")


@dataclass
class InitSource:
    parts: Parts
    config: TransformerConfig  # the weights' model config
    tokenizer: Tokenizer | None  # an arseq source's tokenizer, rebuilt by the run's modality; None for HF folders

    @property
    def where(self) -> str:
        return f"--init-from {self.parts.where}"


def read_source(path: str, modality: Modality, model: dict[str, Any], block_size: int) -> InitSource:
    """Read the weights and check them against the config's model section, before any data is read."""
    parts = read_parts(path)
    where = f"--init-from {parts.where}"
    try:
        source_cfg = TransformerConfig(**parts.model_cfg)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: bad model config ({e})") from None
    wanted = TransformerConfig(vocab_size=source_cfg.vocab_size, max_seq_len=block_size, **model)
    diffs = [
        f"model.{k} is {getattr(source_cfg, k)!r} there but {getattr(wanted, k)!r} in the config"
        for k in STRUCTURE
        if getattr(source_cfg, k) != getattr(wanted, k)
    ]
    if diffs:
        raise DataError(f"{where}: {'; '.join(diffs)} (the model section must match the weights' shape)")
    tokenizer = None
    if parts.tokenizer is not None:
        try:
            tokenizer = modality.load_tokenizer(parts.tokenizer)
        except DataError as e:
            raise DataError(f"{where}: its tokenizer does not fit modality {modality.name!r} ({e})") from None
    return InitSource(parts, source_cfg, tokenizer)


def _resize_rows(weight: Tensor, rows: int) -> Tensor:
    """Keep the first `rows` rows; new rows start at the mean row (an average token, not a random one)."""
    kept = weight[:rows]
    if rows <= weight.shape[0]:
        return kept.clone()
    extra = weight.float().mean(dim=0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
    return torch.cat([kept, extra], dim=0)


def initialise(model: Transformer, source: InitSource, resize_vocab: bool = False) -> str:
    """Copy the source's weights into `model` (freshly built for the run's tokenizer); return a one-line note."""
    state = source.parts.state
    if isinstance(state, Path):
        from safetensors.torch import load_file

        state = load_file(str(state))
    state = dict(state)
    if model.cfg.tie_weights and "embed.weight" in state:  # safetensors files store a tied tensor once
        state.setdefault("lm_head.weight", state["embed.weight"])
    have, want = source.config.vocab_size, model.cfg.vocab_size
    if have != want:
        if not resize_vocab:
            raise DataError(
                f"{source.where}: the weights have a vocabulary of {have} tokens but the tokenizer {want}; "
                "pass --init-from-resize-vocab to resize the embeddings (new tokens start at the mean embedding)"
            )
        for name in ("embed.weight", "lm_head.weight"):
            state[name] = _resize_rows(state[name], want)
        if model.cfg.tie_weights:
            state["lm_head.weight"] = state["embed.weight"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # torch's first line is only "Error(s) in loading state_dict": say which
        detail = " ".join(str(e).split()).removeprefix("Error(s) in loading state_dict for Transformer: ")
        raise DataError(f"{source.where}: weights do not fit the model config ({detail[:300]})") from None
    resized = f", vocabulary resized {have} -> {want}" if have != want else ""
    reused = "its tokenizer" if source.tokenizer is not None else "the config's tokenizer"
    return f"initialised from {source.parts.where} ({reused}{resized}; fresh optimizer and schedule)"
