"""One entry of the token cache: a folder that is complete and verified, or not used at all.

An entry is built in a temporary folder; `checksums.json` (the size and SHA-256 of every other file) is
written last, and the folder is renamed into place. Reading verifies every file against it, so a truncated
or overwritten file is found (not trained on) and the entry rebuilt. Committed entries are never modified:
a damaged one is first renamed away (atomic), so two processes building the same key both end up with one
complete entry, whichever rename won.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from arseq.atomic import atomic_write

MANIFEST = "checksums.json"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(folder: Path) -> None:
    """Record size and checksum of every file in `folder` (the last write of an entry)."""
    entries = {p.name: [p.stat().st_size, _digest(p)] for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write(folder / MANIFEST, json.dumps(entries, indent=1))


def damage(folder: Path) -> str | None:
    """Why the entry at `folder` cannot be used (None: it is whole). A missing folder is not damage."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "incomplete (no checksums)" if folder.exists() else None
    except (OSError, ValueError):
        return f"{MANIFEST} is unreadable"
    for name, (size, digest) in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} expected"
        if _digest(path) != digest:
            return f"{name} does not match its checksum"
    return None


def discard(folder: Path) -> None:
    """Take a damaged entry out of the way atomically, then delete it (another process may race us)."""
    trash = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".trash-"))
    try:
        os.rename(folder, trash / folder.name)
    except OSError:
        pass  # someone else moved or replaced it already
    shutil.rmtree(trash, ignore_errors=True)


def commit(tmp: Path, folder: Path) -> None:
    """Move a sealed temporary entry into place; if another process got there first, keep theirs."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, folder)
    except OSError:  # the folder exists: another process committed the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
