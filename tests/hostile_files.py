"""Crafted files for tests/test_hostile.py: tiny checkpoints (no training), exports, HF folders, bombs.

Everything is built from a 1-layer, 16-wide text model over the characters "abc \\n", so a file costs
milliseconds; a hostile variant changes one field of it.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

CHARS = "abc \n"
TEXT = "abc abc\nab ca\n" * 40


def base_parts(data_paths: str | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(arseq metadata, state dict) of a fresh tiny text model."""
    from arseq.data.config import DataConfig
    from arseq.models.transformer import Transformer, TransformerConfig
    from arseq.tokenizers.char import CharTokenizer

    tok = CharTokenizer(list(CHARS))
    cfg = TransformerConfig(vocab_size=tok.vocab_size, max_seq_len=32, n_layer=1, n_head=2, d_model=16)
    torch.manual_seed(0)
    model = Transformer(cfg)
    meta = {
        "modality": {"name": "text", "options": {"tokenizer": "char"}},
        "tokenizer": tok.to_dict(),
        "data": dataclasses.asdict(DataConfig(paths=data_paths, block_size=32)),
        "model": dataclasses.asdict(cfg),
    }
    return meta, model.state_dict()


def make_ckpt(path: Path, model: dict[str, Any] | None = None, meta: dict[str, Any] | None = None, data_paths: str | None = None, **top: Any) -> Path:
    """A checkpoint as `arseq train` writes it (arseq metadata + model.* state), with fields overridden:
    `model` updates the model config, `meta` replaces metadata keys, `top` adds top-level keys."""
    base, state = base_parts(data_paths)
    base["model"].update(model or {})
    base.update(meta or {})
    torch.save({"arseq": base, "state_dict": {f"model.{k}": v for k, v in state.items()}, **top}, path)
    return path


def make_export(ckpt: Path, out: Path) -> Path:
    from arseq.app.export import export_model
    from arseq.artifacts import checkpoint

    return export_model(checkpoint.load(ckpt), out)


def make_hf(folder: Path, config: dict[str, Any] | None = None, index: dict[str, str] | None = None) -> Path:
    """A Llama-layout HF folder of the tiny model (config.json + model.safetensors, or a shard index)."""
    from safetensors.torch import save_file

    from arseq.artifacts import hf
    from arseq.models.transformer import TransformerConfig

    meta, state = base_parts()
    cfg = TransformerConfig(**meta["model"])
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = {
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_head,
        "num_hidden_layers": cfg.n_layer,
        "intermediate_size": cfg.mlp_hidden,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": True,
    }
    hf_config.update(config or {})
    (folder / "config.json").write_text(json.dumps(hf_config), encoding="utf-8")
    tensors = hf.to_hf_state(state, cfg)
    tensors.pop("lm_head.weight")
    if index is None:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        save_file(tensors, str(folder / "part.safetensors"))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}), encoding="utf-8")
    return folder


def zip_bomb(ckpt: Path, out: Path, inflated: int = 64 * 2**20) -> Path:
    """`ckpt` with one more zip entry: `inflated` zero bytes, deflated to a few KB (torch writes entries stored)."""
    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        prefix = src.namelist()[0].split("/")[0]
        dst.writestr(f"{prefix}/data/zeros", bytes(inflated), compress_type=zipfile.ZIP_DEFLATED)
    return out


def yaml_bomb(path: Path, levels: int = 9) -> Path:
    """A "billion laughs" config: 9^levels strings from a few hundred bytes, under a key arseq ignores."""
    lines = ["modality: {name: text, tokenizer: char}", "junk:", '  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_config(path: Path, data: Path, root: Path, **trainer: Any) -> Path:
    """A 2-step training config of the tiny model (no validation split: saves every step)."""
    settings = {
        "max_steps": 2,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
        **trainer,
    }
    config = {
        "seed": 1,
        "modality": {"name": "text", "tokenizer": "char"},
        "data": {"paths": str(data), "val_fraction": 0.0, "block_size": 16, "batch_size": 4},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "trainer": settings,
    }
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def midi_gap(path: Path, gap: int, division: int = 96) -> Path:
    """A one-note MIDI file whose note lasts `gap` ticks: 37 bytes however long the gap."""

    def varlen(value: int) -> bytes:
        out = [value & 0x7F]
        value >>= 7
        while value:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        return bytes(reversed(out))

    track = b"\x00\x90\x3c\x64" + varlen(gap) + b"\x80\x3c\x00" + b"\x00\xff\x2f\x00"
    path.write_bytes(
        b"MThd"
        + (6).to_bytes(4, "big")
        + (0).to_bytes(2, "big")
        + (1).to_bytes(2, "big")
        + division.to_bytes(2, "big")
        + b"MTrk"
        + len(track).to_bytes(4, "big")
        + track
    )
    return path


def config_file(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path
