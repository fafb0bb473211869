"""Write a model as a self-contained folder: arseq's own format (config.json + model.safetensors +
tokenizer.json, int8 weights when quantized) or a Hugging Face LlamaForCausalLM folder that arseq reads too."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_model

from arseq.artifacts import hf
from arseq.artifacts.checkpoint import EXPORT_FORMAT, QUANTIZED_FORMAT, Loaded
from arseq.atomic import atomic_write, file_mode_mask
from arseq.decode.config import SamplingConfig
from arseq.errors import DataError
from arseq.models.quantize import SCHEMES, quantize_model, scheme_of
from arseq.models.transformer import Transformer
from arseq.outputs import claimed


def export(
    loaded: Loaded,
    out: str | os.PathLike,
    format: str = "arseq",
    quantize: str = "none",
    sampling: SamplingConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a self-contained export directory; refuses to touch a non-empty existing one, unless `overwrite` and it
    holds an earlier export (only its files), which the new one then replaces at once.

    `format="hf"`: a Hugging Face LlamaForCausalLM folder that arseq reads too (see arseq.artifacts.hf).
    `quantize="int8"` (arseq format) stores int8 weights and per-channel scales (about 4x smaller), loaded as they are.
    `sampling`: the settings a Hugging Face `generation_config.json` carries (default: the core's).
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
    check_replaceable(out, overwrite)
    if format == "hf":  # fail before writing anything
        hf.require_transformers()
        hf.check_exportable(loaded.model.cfg)
    with claimed(out):  # another export into `out` refuses; the folders of killed ones are ours to remove
        for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        check_replaceable(out, overwrite)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            os.chmod(tmp, 0o777 & ~file_mode_mask())
            if format == "hf":
                hf.write_hf_folder(tmp, loaded, EXPORT_FORMAT, sampling or SamplingConfig())
            else:
                _write_arseq(tmp, loaded, model)
            for file in tmp.rglob("*"):  # safetensors and transformers write 0600 files: the umask's mode, like ours
                if file.is_file():
                    os.chmod(file, 0o666 & ~file_mode_mask())
            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def check_replaceable(out: Path, overwrite: bool) -> None:
    """`out` is new, an empty folder, or (with `overwrite`) an earlier export: a folder of .json and .safetensors
    files with a config.json, nothing else (never a folder of someone's other work)."""
    if not out.exists() or out.is_dir() and not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(f"{out}: already exists and is not an empty folder; pass --overwrite to replace an earlier export, or choose another --out")
    entries = list(out.iterdir()) if out.is_dir() else []
    other = next((e.name for e in entries if not e.is_file() or e.suffix not in (".json", ".safetensors")), None)
    if not (out / "config.json").is_file() or other is not None:
        raise DataError(f"{out}: --overwrite replaces an earlier export only, and this is not one{f' (it holds {other})' if other else ''}")


def replace_folder(new: Path, out: Path) -> None:
    """`new` renamed to `out`; an `out` there already is moved aside first and removed after, so at every moment
    `out` is the whole old folder or the whole new one (a killed run leaves `.NAME.old-*`, removed by the next)."""
    if out.exists() and any(out.iterdir()):
        aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rename(out, aside / "export")
        os.rename(new, out)
        shutil.rmtree(aside, ignore_errors=True)
        return
    if out.exists():
        out.rmdir()
    os.rename(new, out)


def _write_arseq(tmp: Path, loaded: Loaded, model: Transformer) -> None:
    """config.json + model.safetensors + tokenizer.json: arseq's own format (format 2 when quantized)."""
    config = loaded.meta.to_dict()
    config.update(format=EXPORT_FORMAT, model=model.cfg.__dict__)
    if scheme_of(model) != "none":
        config.update(format=QUANTIZED_FORMAT, quantization=scheme_of(model))
    atomic_write(tmp / "config.json", json.dumps(config, indent=2))
    atomic_write(tmp / "tokenizer.json", json.dumps(loaded.tokenizer.to_dict(), ensure_ascii=False))
    save_model(model, str(tmp / "model.safetensors"))
