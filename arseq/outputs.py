"""Exclusive claims on output paths: two runs into one `--out` cannot both write.

Without a claim, two `generate` runs into the same folder both pass the "does it exist?" check, both sample
for minutes, and the second silently replaces the first one's files. A claim is an advisory lock
(`fcntl.flock`) on a hidden file beside the output, `.NAME.arseq-claim`, taken before any work: the second
run refuses in one line. The kernel drops the lock when its process dies (even by SIGKILL), so a claim is
never stale; the file a killed run leaves is taken over and removed by the next run. Whoever holds the
claim also removes the temporary files that killed runs left in the output (arseq.atomic names them).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from arseq.atomic import TEMP_MARK
from arseq.errors import DataError

try:
    import fcntl
except ImportError:  # Windows: no flock; claims are then a no-op (the existence checks still apply)
    fcntl = None  # type: ignore[assignment]

CLAIM_SUFFIX = ".arseq-claim"


def claim_path(out: Path) -> Path:
    return out.parent / f".{out.name}{CLAIM_SUFFIX}"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _lock(path: Path, out: Path) -> int:
    """An fd holding an exclusive flock on `path`, which still names the locked file (a release may unlink
    it between our open and our lock: then lock the new one)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DataError(f"{out}: another arseq run{_holder(path)} is writing there; wait for it to finish or choose another --out") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def clean_output(out: Path) -> list[Path]:
    """Temporary files of killed writes into `out` (a folder: anywhere inside it; a file: its own temps).
    Only called under the claim, so no live run of ours is writing them."""
    if out.is_dir():
        found = [p for p in out.rglob(f".*{TEMP_MARK}*") if p.is_file()]
    else:
        found = [p for p in out.parent.glob(f".{out.name}.*{TEMP_MARK}*") if p.is_file()] if out.parent.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def claimed(out: str | os.PathLike | None) -> Iterator[Path | None]:
    """Hold the output path `out` (a file or folder, existing or not) for the duration; None: nothing to claim."""
    if out is None or fcntl is None:
        yield None if out is None else Path(out)
        return
    out = Path(out)
    existing = next(p for p in [out.parent, *out.parent.parents] if p.exists() or p == p.parent)
    if existing.exists() and not existing.is_dir():
        raise DataError(f"{existing}: is a file, not a folder; choose another --out")
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()][::-1]
    path = claim_path(out)
    try:
        for folder in created:
            folder.mkdir(exist_ok=True)
        fd = _lock(path, out)
    except BaseException as e:
        _remove_empty(created)
        if isinstance(e, OSError):  # not a folder arseq may write in (/proc, read-only, not allowed): name --out, not the lock file
            raise DataError(f"{out}: cannot write there ({e.strerror or e}); choose another --out") from None
        raise
    try:
        clean_output(out)
        yield out
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting open then sees a new file
        os.close(fd)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """The parent folders a claim created, if nothing was written in them."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            break


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (numpy's too) as None, so that it is valid JSON (`null`)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    """json.dumps for reports on stdout and in files: NaN and infinities become null (json.dumps would write
    `NaN`, which is not JSON), numpy numbers plain numbers."""
    return json.dumps(finite(value), allow_nan=False, default=float, **kwargs)


def printable_name(name: str) -> str:
    """A file name as text any UTF-8 writer accepts: bytes that are not UTF-8 (kept by Python as surrogate
    escapes, which cannot be encoded) shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with = + - @ (or a tab or carriage return)
    would be run as a formula (`=HYPERLINK(...)` in a file name), so it gets a leading apostrophe."""
    if isinstance(value, str):
        value = printable_name(value)
        if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
            return "'" + value
    return value


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV text; cells a spreadsheet would run as formulas are made text, non-UTF-8 names printable."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["empty"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()
