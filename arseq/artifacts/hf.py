"""Hugging Face interoperability: arseq's transformer <-> `LlamaForCausalLM` (config, weights, generation defaults).

arseq's model is Llama-shaped — RoPE rotating halves (HF's `rotate_half`), RMSNorm, SwiGLU — but stores the
attention input projections fused (`qkv`) and the MLP's gate and up projections fused (`gate_up`). Weights are
split on the way out and fused on the way in; q/k need no permutation (same RoPE layout; the export checks
logits). Reading an HF folder needs only safetensors/torch (`weights_only=True`): no code runs and
`transformers` is not needed. Writing one uses `transformers` (the `hf` extra), imported only then.

An HF export folder holds HF's files (config.json, model.safetensors, generation_config.json) plus arseq's
modality/data settings (arseq.json) and tokenizer (arseq_tokenizer.json), so `arseq generate` reads it too.
"""

from __future__ import annotations

import copy
import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from arseq.atomic import atomic_write
from arseq.decode.config import SamplingConfig
from arseq.errors import first_line
from arseq.limits import check_model, check_zip_entries, inside
from arseq.modalities import DataError
from arseq.models.transformer import Transformer, TransformerConfig

if TYPE_CHECKING:
    from arseq.artifacts.checkpoint import Loaded

HF_META, HF_TOKENIZER = "arseq.json", "arseq_tokenizer.json"
LLAMA_TYPES = ("llama", "mistral")  # same layout; mistral only without a binding sliding window
# TransformerConfig fields with a LlamaConfig equivalent, and those that only matter while training.
MAPPED = {"vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "mlp_hidden", "attn_dropout", "tie_weights", "bias", "rope_base", "norm_eps"}
TRAINING_ONLY = {"dropout"}
# TransformerConfig size fields as config.json spells them (so a refusal names the field the file has)
HF_NAMES = {
    "vocab_size": "vocab_size",
    "max_seq_len": "max_position_embeddings",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "d_model": "hidden_size",
    "mlp_hidden": "intermediate_size",
}
LOGITS_TOLERANCE = 1e-4  # float32


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise DataError("--format hf needs the transformers package: pip install 'arseq[hf]'") from None
    return transformers


def check_exportable(cfg: TransformerConfig) -> None:
    """Refuse, in one line, a setting a LlamaForCausalLM cannot reproduce (fields added to the model later)."""
    for f in fields(cfg):
        if f.name in MAPPED | TRAINING_ONLY:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
        if getattr(cfg, f.name) != default:
            raise DataError(f"model.{f.name}={getattr(cfg, f.name)!r} has no Llama equivalent: --format hf cannot export it")


def llama_config_kwargs(cfg: TransformerConfig, bos_id: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """Keyword arguments of `transformers.LlamaConfig` for the same model (`rope_theta`: v4 and v5 accept it)."""
    check_exportable(cfg)
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "tie_word_embeddings": cfg.tie_weights,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.attn_dropout,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }


def config_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """TransformerConfig keyword arguments for an HF Llama-family config.json; one line on what cannot map."""

    def refuse(what: str) -> DataError:
        return DataError(f"{where}: {what}, which arseq's transformer cannot hold")

    kind = hf.get("model_type")
    if kind not in LLAMA_TYPES:
        raise DataError(f"{where}: model_type {kind!r} is not a Llama-family model ({', '.join(LLAMA_TYPES)})")
    try:
        n_head, d_model = int(hf["num_attention_heads"]), int(hf["hidden_size"])
        max_len = int(hf.get("max_position_embeddings") or 2048)
        if hf.get("num_key_value_heads") not in (None, n_head):
            raise refuse(f"grouped-query attention ({hf['num_key_value_heads']} key/value heads for {n_head} heads)")
        if hf.get("head_dim") not in (None, d_model // n_head):
            raise refuse(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise refuse(f"hidden_act {hf['hidden_act']!r}")
        rope = dict(hf.get("rope_parameters") or {})
        rope.update(hf.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise refuse(f"RoPE scaling {rope_type!r}")
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            raise refuse("biases in attention but not in the MLP (or the reverse)")
        window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
        if window is not None and int(window) < max_len:
            raise refuse(f"sliding-window attention ({window} < {max_len} positions)")
        return {
            "vocab_size": int(hf["vocab_size"]),
            "max_seq_len": max_len,
            "n_layer": int(hf["num_hidden_layers"]),
            "n_head": n_head,
            "d_model": d_model,
            "mlp_hidden": int(hf["intermediate_size"]),
            "tie_weights": bool(hf.get("tie_word_embeddings", False)),
            "bias": bool(hf.get("attention_bias", False)),
            "rope_base": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
            "attn_dropout": float(hf.get("attention_dropout", 0.0)),
        }
    except DataError:
        raise
    except KeyError as e:
        raise DataError(f"{where}: config.json lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: config.json has an unusable value ({e})") from None


def _pairs(cfg: TransformerConfig) -> list[tuple[str, list[str]]]:
    """(arseq name, HF names it splits into), for every tensor of the model."""
    kinds = ("weight", "bias") if cfg.bias else ("weight",)
    out = [("embed.weight", ["model.embed_tokens.weight"]), ("norm.weight", ["model.norm.weight"]), ("lm_head.weight", ["lm_head.weight"])]
    for i in range(cfg.n_layer):
        a, h = f"blocks.{i}.", f"model.layers.{i}."
        out += [(a + "norm1.weight", [h + "input_layernorm.weight"]), (a + "norm2.weight", [h + "post_attention_layernorm.weight"])]
        for k in kinds:
            out += [
                (a + f"attn.qkv.{k}", [h + f"self_attn.{p}_proj.{k}" for p in "qkv"]),
                (a + f"attn.proj.{k}", [h + f"self_attn.o_proj.{k}"]),
                (a + f"mlp.gate_up.{k}", [h + f"mlp.{p}_proj.{k}" for p in ("gate", "up")]),
                (a + f"mlp.down.{k}", [h + f"mlp.down_proj.{k}"]),
            ]
    return out


def to_hf_state(state: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """arseq state dict -> LlamaForCausalLM state dict (fused tensors split row-wise, float32, contiguous)."""
    out: dict[str, Tensor] = {}
    for name, targets in _pairs(cfg):
        for target, part in zip(targets, state[name].float().chunk(len(targets), dim=0)):
            out[target] = part.clone().contiguous()
    return out


def from_hf_state(state: dict[str, Tensor], cfg: TransformerConfig, where: str) -> dict[str, Tensor]:
    """LlamaForCausalLM state dict -> arseq state dict; one line on a missing or unknown tensor."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}  # a buffer in old files
    if cfg.tie_weights:  # the head is the embedding (files may store it once or twice; a missing one is said below)
        if "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
    elif "lm_head.weight" not in state:
        raise DataError(f"{where}: no lm_head.weight, yet tie_word_embeddings is false")
    out, used = {}, set()
    for name, sources in _pairs(cfg):
        missing = [s for s in sources if state.get(s) is None]
        if missing:
            raise DataError(f"{where}: no weight {missing[0]} in the model files")
        out[name] = torch.cat([state[s].float() for s in sources], dim=0)
        used.update(sources)
    extra = sorted(set(state) - used)
    if extra:
        raise DataError(f"{where}: weight {extra[0]} has no place in a Llama model of this config")
    return out


def is_hf_folder(path: Path) -> bool:
    """A folder whose config.json is a transformers config (it names a model_type)."""
    try:
        config = json.loads(inside(path, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and "model_type" in config


def _read_tensors(path: Path, where: str) -> dict[str, Tensor]:
    """Weights from model.safetensors, a sharded index, or pytorch_model.bin (weights_only=True: no code runs)."""
    from safetensors.torch import load_file

    def read(file: Path) -> dict[str, Tensor]:
        try:
            if file.suffix == ".safetensors":
                return load_file(str(file))
            check_zip_entries(file)  # before torch.load inflates them
            return torch.load(file, map_location="cpu", weights_only=True)
        except DataError:
            raise
        except Exception as e:  # corrupt or foreign files: whatever it is, one line
            raise DataError(f"{file}: unreadable weights ({type(e).__name__}: {first_line(e)})") from None

    for single, index in (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (path / single).exists():
            return read(inside(path, single))
        if (path / index).exists():
            try:
                names = json.loads(inside(path, index).read_text(encoding="utf-8"))["weight_map"].values()
                shards = sorted(set(names))
            except (OSError, ValueError, KeyError, AttributeError, TypeError, RecursionError):
                raise DataError(f"{path / index}: not a readable weight index") from None
            files = [inside(path, shard) for shard in shards]  # every name checked before any file is read
            state: dict[str, Tensor] = {}
            for file in files:
                state.update(read(file))
            return state
    raise DataError(f"{where}: no model.safetensors or pytorch_model.bin in this folder")


def read_hf_folder(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(TransformerConfig kwargs, arseq state dict) of a Llama-family HF folder."""
    where = str(path)
    try:
        hf = json.loads(inside(path, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise DataError(f"{where}: no readable config.json") from None
    if not isinstance(hf, dict):
        raise DataError(f"{where}: config.json is not a mapping")
    model_cfg = config_from_hf(hf, where)
    check_model(model_cfg, f"{where}/config.json", prefix="", names=HF_NAMES)  # before any weight is read
    try:
        cfg = TransformerConfig(**model_cfg)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None
    return model_cfg, from_hf_state(_read_tensors(path, where), cfg, where)


def generation_kwargs(s: SamplingConfig, bos_id: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """`transformers.GenerationConfig` arguments for arseq's sampling settings (top_k 0: HF's default is 50)."""
    out: dict[str, Any] = {
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "max_new_tokens": s.max_new_tokens,
        "do_sample": s.temperature > 0,
    }
    if s.repetition_penalty != 1.0:
        out["repetition_penalty"] = s.repetition_penalty
    if s.temperature > 0:
        out.update(temperature=s.temperature, top_k=s.top_k or 0, top_p=s.top_p if s.top_p is not None else 1.0)
        if s.min_p is not None:
            out["min_p"] = s.min_p
    return out


def _check_logits(model: Transformer, hf_model: Any) -> None:
    """The exported model must predict what arseq's does; raise (nothing is written) if it does not."""
    cfg = model.cfg
    x = torch.randint(0, cfg.vocab_size, (2, min(64, cfg.max_seq_len)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x) - hf_model(input_ids=x).logits).abs().max().item()
    if not diff <= LOGITS_TOLERANCE:
        raise DataError(f"--format hf: the converted model's logits differ by {diff:.2e} (> {LOGITS_TOLERANCE}); not exported")


def write_hf_folder(folder: Path, loaded: Loaded, export_format: int, sampling: SamplingConfig) -> None:
    """Write HF's config/weights, a generation config of `sampling`, and arseq's settings and tokenizer into `folder`."""
    transformers = require_transformers()
    tok, model = loaded.tokenizer, copy.deepcopy(loaded.model).float().eval()
    ids = (tok.bos_id, tok.eos_id, tok.pad_id)
    hf_config = transformers.LlamaConfig(**llama_config_kwargs(model.cfg, *ids))
    hf_config.architectures = ["LlamaForCausalLM"]
    hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    hf_model.load_state_dict(to_hf_state(model.state_dict(), model.cfg), strict=True)
    _check_logits(model, hf_model)
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # a bar for a one-file write is noise on the CLI
    try:
        hf_model.save_pretrained(str(folder))
    finally:
        if shown:
            bars.enable_progress_bar()
    transformers.GenerationConfig(**generation_kwargs(sampling, *ids)).save_pretrained(str(folder))
    meta = loaded.meta.to_dict()
    meta.update(format=export_format, layout="hf-llama", model=asdict(model.cfg))
    atomic_write(folder / HF_META, json.dumps(meta, indent=2))
    atomic_write(folder / HF_TOKENIZER, json.dumps(tok.to_dict(), ensure_ascii=False))
