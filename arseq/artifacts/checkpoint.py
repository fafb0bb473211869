"""Load a model, its tokenizer and its modality from a Lightning checkpoint, an export directory or a
Hugging Face folder (writing exports: arseq.artifacts.export).

Checkpoints are read with `torch.load(weights_only=True)`: no code from a file is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model

from arseq.artifacts import hf
from arseq.artifacts.metadata import RunMeta
from arseq.conditioning import Controls
from arseq.errors import first_line, one_line
from arseq.limits import check_model, check_zip_entries, inside
from arseq.modalities import DataError, Modality, resolve
from arseq.models.quantize import SCHEMES, quantize_model
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.tokenizers.base import Tokenizer, read_tokenizer_state

log = logging.getLogger(__name__)
EXPORT_FORMAT = 1
QUANTIZED_FORMAT = 2  # int8 weights: an arseq that knows only format 1 refuses these in one line


@dataclass
class Loaded:
    model: Transformer
    tokenizer: Tokenizer
    modality: Modality
    meta: RunMeta  # modality, data and model configs, conditions
    # How the modality was chosen at load (`load`'s arguments): a draft model loaded for this one is trusted alike.
    chosen_modality: str | None = None
    trust_import: bool = False

    @property
    def controls(self) -> Controls | None:
        """The control tokens of a conditioned model (None: trained without conditions)."""
        return Controls.from_dict(self.meta.conditions)


@contextlib.contextmanager
def stored_data(loaded: Loaded, data_paths: list[str] | None) -> Iterator[None]:
    """Around evaluate/drift: the data paths stored in a checkpoint are read only when the user names none
    (and then said on stderr); with --data.paths they are hidden for the call, so nothing the file names is
    read. (Exports and HF folders never give theirs: see RunMeta.without_data_paths.)"""
    stored = loaded.meta.data_paths()
    if not data_paths:
        if stored:
            log.warning("arseq: no --data.paths: reading the data paths stored in the checkpoint: %s", ", ".join(map(str, stored)))
        yield
        return
    meta = loaded.meta
    loaded.meta = meta.without_data_paths()
    try:
        yield
    finally:
        loaded.meta = meta


def build_modality(meta: RunMeta, where: str, modality: str | None = None, trust_import: bool = False) -> Modality:
    """The file's modality: registered names only, unless the user named the class (`modality`) or trusts the file."""
    try:
        cls = resolve(modality or meta.modality, allow_import=trust_import or modality is not None)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    try:
        return cls(**meta.modality_options)
    except TypeError as e:
        raise DataError(f"{where}: modality settings are unusable ({e})") from None


def _assemble(
    model_cfg: dict[str, Any],
    state: dict[str, torch.Tensor] | Path,
    meta: RunMeta,
    tok_state: dict[str, Any],
    where: str,
    modality: str | None = None,
    trust_import: bool = False,
    quantization: str = "none",
) -> Loaded:
    check_model(model_cfg, where)
    try:
        cfg = TransformerConfig(**model_cfg)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: bad model config ({e})") from None
    chosen = build_modality(meta, where, modality, trust_import)
    tokenizer = rebuild_tokenizer(chosen, tok_state, where)
    try:
        controls = Controls.from_dict(meta.conditions)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{where}: unusable conditions ({e})") from None
    extra = controls.size if controls is not None else 0
    extra += 3 if meta.fim else 0  # fill-in-the-middle sentinels (arseq.decode.infill.Fim)
    if tokenizer.vocab_size + extra != cfg.vocab_size:
        raise DataError(
            f"{where}: tokenizer has {tokenizer.vocab_size} tokens{f' and {extra} control tokens' if extra else ''} "
            f"but the model's vocabulary is {cfg.vocab_size}"
        )
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


def rebuild_tokenizer(modality: Modality, state: Any, where: str) -> Tokenizer:
    """The modality's tokenizer from stored state; state of the wrong shape (missing keys, wrong types,
    garbage BPE) is one line naming the file, whatever the tokenizer class raises."""
    if not isinstance(state, dict):
        raise DataError(f"{where}: tokenizer state is a {type(state).__name__}, not a mapping")
    try:
        return modality.load_tokenizer(state)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except Exception as e:  # KeyError, TypeError, RecursionError..., and the HF tokenizers library's plain Exception
        raise DataError(f"{where}: tokenizer state is unusable ({one_line(e, with_type=True, limit=200)})") from None


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    if path.is_file():
        check_zip_entries(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint") from None
    except Exception as e:  # pickle/zip errors: whatever it is, it is not ours
        if path.suffix != ".ckpt":  # another file given by mistake (metrics.csv, a .pt of another tool)
            raise DataError(f"{path}: not a checkpoint; give a .ckpt, a run folder of 'arseq train' or a folder from 'arseq export'") from None
        raise DataError(f"{path}: not a readable checkpoint, truncated or damaged ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("arseq"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise DataError(f"{path}: not an arseq checkpoint (no arseq metadata)")
    missing = [k for k in ("model", "modality", "tokenizer") if k not in ckpt["arseq"]]
    if missing:
        raise DataError(f"{path}: arseq metadata lacks {', '.join(missing)}")
    return ckpt


def find_checkpoint(path: Path) -> Path:
    """Let users name a run folder: `runs/music` (newest version) or `runs/music/version_3` -> its best .ckpt."""
    if not path.is_dir() or (path / "config.json").exists():
        return path
    # The newest version that holds a checkpoint: a run killed before its first one, or a resume that had
    # nothing to do, leaves a newer version folder without any.
    versions = sorted((v for v in path.glob("version_*") if _has_checkpoint(v / "checkpoints")), key=lambda p: p.stat().st_mtime)
    run = versions[-1] if versions and not _has_checkpoint(path / "checkpoints") else path
    ckpts = run / "checkpoints"
    best = sorted(ckpts.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (ckpts / "last.ckpt").exists():
        return ckpts / "last.ckpt"
    raise DataError(f"{path}: no checkpoint, export or run folder with checkpoints here")


def _has_checkpoint(folder: Path) -> bool:
    return (folder / "last.ckpt").is_file() or any(folder.glob("best-*.ckpt"))


@dataclass
class Parts:
    """What a model file holds before it is assembled: arseq metadata and tokenizer are None for a plain HF folder."""

    model_cfg: dict[str, Any]
    state: dict[str, torch.Tensor] | Path  # a Path: an arseq export's model.safetensors
    meta: RunMeta | None  # None: a Hugging Face folder without arseq's settings
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
                meta = json.loads(inside(path, hf.HF_META).read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    raise ValueError("not a mapping")
            except (OSError, ValueError, RecursionError):
                raise DataError(f"{path / hf.HF_META}: not readable arseq settings") from None
            return Parts(
                model_cfg,
                state,
                RunMeta.from_dict(meta, str(path / hf.HF_META)).without_data_paths(),
                read_tokenizer_state(inside(path, hf.HF_TOKENIZER)),
                str(path),
            )
        config_file = inside(path, "config.json")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            raise DataError(f"{path}: not an arseq export (no readable config.json)") from None
        if not isinstance(config, dict) or config.get("format") not in (EXPORT_FORMAT, QUANTIZED_FORMAT) or "model" not in config:
            raise DataError(f"{config_file}: not an arseq export config (format {EXPORT_FORMAT} or {QUANTIZED_FORMAT})")
        quantization = config.get("quantization", "none") if config["format"] == QUANTIZED_FORMAT else "none"
        if quantization not in SCHEMES:
            raise DataError(f"{config_file}: quantization {quantization!r} is unknown to this arseq (--quantize: {', '.join(SCHEMES)})")
        tok_state = read_tokenizer_state(inside(path, "tokenizer.json"))
        check_model(config["model"], str(config_file))
        return Parts(
            config["model"],
            inside(path, "model.safetensors"),
            RunMeta.from_dict(config, str(config_file)).without_data_paths(),
            tok_state,
            str(path),
            quantization,
        )
    ckpt = load_checkpoint_file(path)
    meta = RunMeta.from_dict(ckpt["arseq"], str(path))
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return Parts(meta.model, state, meta, ckpt["arseq"].get("tokenizer"), str(path))


def load(path: str | os.PathLike, modality: str | None = None, trust_import: bool = False) -> Loaded:
    """A `.ckpt` file from `arseq train`, a run folder holding them, or a directory from `arseq export`.

    The file's modality is resolved among registered modalities only; `modality` (a registered name or
    `package.module:Class` the user chose) overrides it, and `trust_import` allows the file's own import path.
    """
    parts = read_parts(path)
    if parts.meta is None or parts.tokenizer is None:
        raise DataError(
            f"{parts.where}: a Hugging Face model without arseq's tokenizer and modality ({hf.HF_META}); "
            "start a run from it with 'arseq train --init-from'"
        )
    loaded = _assemble(parts.model_cfg, parts.state, parts.meta, parts.tokenizer, parts.where, modality, trust_import, parts.quantization)
    loaded.chosen_modality, loaded.trust_import = modality, trust_import
    return loaded
