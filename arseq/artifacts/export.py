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


def export(loaded: Loaded, out: str | os.PathLike, format: str = "arseq", quantize: str = "none", sampling: SamplingConfig | None = None) -> Path:
    """Write a self-contained export directory; refuses to touch a non-empty existing one.

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
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not an empty folder; choose another --out")
    if format == "hf":  # fail before writing anything
        hf.require_transformers()
        hf.check_exportable(loaded.model.cfg)
    with claimed(out):  # another export into `out` refuses; the folders of killed ones are ours to remove
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise DataError(f"{out}: already exists and is not an empty folder; choose another --out")
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
            if out.exists():
                out.rmdir()
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _write_arseq(tmp: Path, loaded: Loaded, model: Transformer) -> None:
    """config.json + model.safetensors + tokenizer.json: arseq's own format (format 2 when quantized)."""
    config = loaded.meta.to_dict()
    config.update(format=EXPORT_FORMAT, model=model.cfg.__dict__)
    if scheme_of(model) != "none":
        config.update(format=QUANTIZED_FORMAT, quantization=scheme_of(model))
    atomic_write(tmp / "config.json", json.dumps(config, indent=2))
    atomic_write(tmp / "tokenizer.json", json.dumps(loaded.tokenizer.to_dict(), ensure_ascii=False))
    save_model(model, str(tmp / "model.safetensors"))
