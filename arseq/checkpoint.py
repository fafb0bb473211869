"""Load a model, its tokenizer and its modality from a Lightning checkpoint or an export directory,
and write exports (config.json + model.safetensors + tokenizer.json, or a Hugging Face folder).

Checkpoints are read with `torch.load(weights_only=True)`: no code from a file is ever unpickled.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from arseq.atomic import atomic_write
from arseq.conditioning import Controls
from arseq.errors import first_line, one_line
from arseq.interop import hf
from arseq.modalities import DataError, Modality, resolve
from arseq.models.quantize import SCHEMES, quantize_model, scheme_of
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.tokenizers.base import Tokenizer, read_tokenizer_state

EXPORT_FORMAT = 1
QUANTIZED_FORMAT = 2  # int8 weights: an arseq that knows only format 1 refuses these in one line


@dataclass
class Loaded:
    model: Transformer
    tokenizer: Tokenizer
    modality: Modality
    meta: dict[str, Any]  # modality name/options, data config, model config, conditions

    @property
    def controls(self) -> Controls | None:
        """The control tokens of a conditioned model (None: trained without conditions)."""
        return Controls.from_dict(self.meta.get("conditions"))


def build_modality(meta: dict[str, Any], where: str, modality: str | None = None, trust_import: bool = False) -> Modality:
    """The file's modality: registered names only, unless the user named the class (`modality`) or trusts the file."""
    try:
        spec = meta["modality"]
        stored = spec["name"]
        if not isinstance(stored, str):
            raise TypeError(f"modality name {stored!r} is not a string")
        chosen = modality or stored
        try:
            cls = resolve(chosen, allow_import=trust_import or modality is not None)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        return cls(**spec.get("options", {}))
    except (KeyError, TypeError) as e:
        raise DataError(f"{where}: modality settings are unusable ({e})") from None


def _assemble(
    model_cfg: dict[str, Any], state: dict[str, torch.Tensor] | Path, meta: dict[str, Any], tok_state: dict[str, Any],
    where: str, modality: str | None = None, trust_import: bool = False, quantization: str = "none",
) -> Loaded:
    try:
        cfg = TransformerConfig(**model_cfg)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: bad model config ({e})") from None
    chosen = build_modality(meta, where, modality, trust_import)
    tokenizer = chosen.load_tokenizer(tok_state)
    try:
        controls = Controls.from_dict(meta.get("conditions"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{where}: unusable conditions ({e})") from None
    extra = controls.size if controls is not None else 0
    if tokenizer.vocab_size + extra != cfg.vocab_size:
        raise DataError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens{f' and {extra} control tokens' if extra else ''} "
                        f"but the model's vocabulary is {cfg.vocab_size}")
    model = quantize_model(Transformer(cfg), quantization)  # int8 exports: the int8 modules, then their weights
    try:
        if isinstance(state, Path):
            load_model(model, str(state), strict=True)
        else:
            model.load_state_dict(state, strict=True)
    except SafetensorError as e:
        raise DataError(f"{state}: not a readable safetensors file, truncated or damaged ({one_line(e)})") from None
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(f"{where}: weights do not fit the model config ({first_line(e)})") from None
    return Loaded(model.eval(), tokenizer, chosen, meta)


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint") from None
    except Exception as e:  # pickle/zip errors: whatever it is, it is not ours
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "arseq" not in ckpt or "state_dict" not in ckpt:
        raise DataError(f"{path}: not an arseq checkpoint (no arseq metadata)")
    return ckpt


def find_checkpoint(path: Path) -> Path:
    """Let users name a run folder: `runs/music` (newest version) or `runs/music/version_3` -> its best .ckpt."""
    if not path.is_dir() or (path / "config.json").exists():
        return path
    versions = sorted(path.glob("version_*"), key=lambda p: p.stat().st_mtime)
    run = versions[-1] if versions and not (path / "checkpoints").is_dir() else path
    ckpts = run / "checkpoints"
    best = sorted(ckpts.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (ckpts / "last.ckpt").exists():
        return ckpts / "last.ckpt"
    raise DataError(f"{path}: no checkpoint, export or run folder with checkpoints here")


@dataclass
class Parts:
    """What a model file holds before it is assembled: arseq metadata and tokenizer are None for a plain HF folder."""

    model_cfg: dict[str, Any]
    state: dict[str, torch.Tensor] | Path  # a Path: an arseq export's model.safetensors
    meta: dict[str, Any] | None
    tokenizer: dict[str, Any] | None
    where: str
    quantization: str = "none"  # int8 exports hold int8 weights and scales


def read_parts(path: str | os.PathLike) -> Parts:
    """Read a .ckpt, a run folder, an arseq export (either format) or a Hugging Face Llama folder."""
    path = find_checkpoint(Path(path))
    if path.is_dir():
        if (path / hf.HF_META).exists() or hf.is_hf_folder(path):
            model_cfg, state = hf.read_hf_folder(path)
            if not (path / hf.HF_META).exists():
                return Parts(model_cfg, state, None, None, str(path))
            try:
                meta = json.loads((path / hf.HF_META).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise DataError(f"{path / hf.HF_META}: not readable arseq settings") from None
            return Parts(model_cfg, state, meta, read_tokenizer_state(path / hf.HF_TOKENIZER), str(path))
        config_file = path / "config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise DataError(f"{path}: not an arseq export (no readable config.json)") from None
        if not isinstance(config, dict) or config.get("format") not in (EXPORT_FORMAT, QUANTIZED_FORMAT) or "model" not in config:
            raise DataError(f"{config_file}: not an arseq export config (format {EXPORT_FORMAT} or {QUANTIZED_FORMAT})")
        quantization = config.get("quantization", "none") if config["format"] == QUANTIZED_FORMAT else "none"
        if quantization not in SCHEMES:
            raise DataError(f"{config_file}: quantization {quantization!r} is unknown to this arseq (--quantize: {', '.join(SCHEMES)})")
        tok_state = read_tokenizer_state(path / "tokenizer.json")
        return Parts(config["model"], path / "model.safetensors", config, tok_state, str(path), quantization)
    ckpt = load_checkpoint_file(path)
    meta = ckpt["arseq"]
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return Parts(meta["model"], state, meta, meta["tokenizer"], str(path))


def load(path: str | os.PathLike, modality: str | None = None, trust_import: bool = False) -> Loaded:
    """A `.ckpt` file from `arseq train`, a run folder holding them, or a directory from `arseq export`.

    The file's modality is resolved among registered modalities only; `modality` (a registered name or
    `package.module:Class` the user chose) overrides it, and `trust_import` allows the file's own import path.
    """
    parts = read_parts(path)
    if parts.meta is None or parts.tokenizer is None:
        raise DataError(f"{parts.where}: a Hugging Face model without arseq's tokenizer and modality ({hf.HF_META}); "
                        "start a run from it with 'arseq train --init-from'")
    return _assemble(parts.model_cfg, parts.state, parts.meta, parts.tokenizer, parts.where, modality, trust_import,
                     parts.quantization)


def export(loaded: Loaded, out: str | os.PathLike, format: str = "arseq", quantize: str = "none") -> Path:
    """Write a self-contained export directory; refuses to touch a non-empty existing one.

    `format="hf"`: a Hugging Face LlamaForCausalLM folder that arseq reads too (see arseq.interop.hf).
    `quantize="int8"` (arseq format) stores int8 weights and per-channel scales (about 4x smaller), loaded as they are.
    """
    if quantize not in SCHEMES:
        raise DataError(f"--quantize must be one of {', '.join(SCHEMES)}, got {quantize!r}")
    if format == "hf" and (quantize != "none" or scheme_of(loaded.model) != "none"):
        raise DataError("--format hf writes float weights: drop --quantize (a Llama folder has no int8 layout here)")
    model = loaded.model
    if quantize != "none" and scheme_of(model) != quantize:
        model = quantize_model(copy.deepcopy(model).cpu(), quantize)  # the caller's model stays as it was
    out = Path(out)
    if format not in ("arseq", "hf"):
        raise DataError(f"--format {format!r}: choose arseq or hf")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not an empty folder; choose another --out")
    if format == "hf":  # fail before writing anything
        hf.require_transformers()
        hf.check_exportable(loaded.model.cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)
        if format == "hf":
            hf.write_hf_folder(tmp, loaded, EXPORT_FORMAT)
        else:
            _write_arseq(tmp, loaded, model)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_arseq(tmp: Path, loaded: Loaded, model: Transformer) -> None:
    """config.json + model.safetensors + tokenizer.json: arseq's own format (format 2 when quantized)."""
    config = {k: v for k, v in loaded.meta.items() if k != "tokenizer"}
    config.update(format=EXPORT_FORMAT, model=model.cfg.__dict__)
    if scheme_of(model) != "none":
        config.update(format=QUANTIZED_FORMAT, quantization=scheme_of(model))
    atomic_write(tmp / "config.json", json.dumps(config, indent=2))
    atomic_write(tmp / "tokenizer.json", json.dumps(loaded.tokenizer.to_dict(), ensure_ascii=False))
    save_model(model, str(tmp / "model.safetensors"))
