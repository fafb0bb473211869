"""Where prepared data is cached and what names an entry: the key hashes the modality and its options, the
input files (path, size, mtime), the split settings and, when one is given, the tokenizer. Also the cleanup
of temporary entry folders that killed runs left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from arseq.conditioning import Controls
from arseq.data.config import DataConfig
from arseq.modalities.base import DataError, Modality
from arseq.tokenizers.base import Tokenizer

CACHE_FORMAT = 7  # 2: entries carry checksums.json; 3: conditions (controls.json); 4: image classes as conditions;
# 5: conditions head every training window; 6: meta.json records tokens per item (item_tokens); 7: the Bach
# chorales' four voices alone


def cache_root() -> Path:
    """$ARSEQ_CACHE_DIR, else ~/.cache/arseq; a file there is one line, not errors from every path inside it."""
    root = Path(os.environ.get("ARSEQ_CACHE_DIR") or Path.home() / ".cache" / "arseq")
    if root.exists() and not root.is_dir():
        raise DataError(f"cache folder {root} (ARSEQ_CACHE_DIR) is a file, not a folder")
    return root


def _fingerprint(files: list[Path]) -> list[tuple[str, int, int]]:
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return out


def cache_key(
    modality: Modality,
    options: dict[str, Any],
    data: DataConfig,
    files: list[Path],
    val_files: list[Path],
    tokenizer: Tokenizer | None,
    controls: Controls | None = None,
) -> str:
    spec = {
        "format": CACHE_FORMAT,
        "modality": modality.name,
        "options": {k: v for k, v in options.items() if k != "workers"},  # how many processes read: not the data
        "source": data.source,
        "files": _fingerprint(files),
        "val_files": _fingerprint(val_files),
        "split": [data.val_fraction, data.seed] if not val_files else None,
        "conditions": data.conditions,
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
    }
    if modality.reading_version:
        spec["reading"] = modality.reading_version
    if controls is not None:
        spec["controls"] = controls.to_dict()
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def remove_stale_builds(root: Path) -> list[Path]:
    """Delete the temporary entry folders (`.tmp-PID-*`, `.trash-*`) of prepare runs that were killed:
    their process is gone, so no one will finish or remove them (one was ~100 MB, kept forever)."""
    removed = []
    for folder in [*root.glob(".tmp-*"), *root.glob("*/.trash-*")]:
        pid = folder.name.split("-")[1] if folder.name.startswith(".tmp-") else ""
        alive = pid.isdigit() and _alive(int(pid))
        if folder.is_dir() and not alive and (pid.isdigit() or time.time() - folder.stat().st_mtime > 3600):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
