"""The one way arseq writes files: a temporary file in the destination folder, fsync, then `os.replace`.

Readers (and a process killed at any moment) see the old file or the whole new one, never half of it,
and files get the usual permissions (0666 minus the umask; `mkstemp` alone would leave them 0600).
`OutputFiles` groups the files one command writes, so none replaces an existing file unless the user
asked for it, and a failure midway leaves neither half-written files nor folders it created.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from arseq.errors import DataError

# What to write: text, bytes, or a function that writes the file at the path it is given (for libraries
# such as music21 or pillow that want a file name; the temporary name keeps the destination's suffix).
Content = str | bytes | Callable[[Path], None]
TEMP_MARK = ".tmp"  # temporary files are named .NAME.RANDOM.tmpSUFFIX: hidden, and found again after a kill


def file_mode_mask() -> int:
    """The process's umask (read by setting it and setting it back: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stage(path: Path, content: Content) -> Path:
    """Write `content` to a fresh temporary file beside `path`, flushed to disk; return its path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{path.suffix}")
    try:
        if callable(content):
            os.close(fd)
            try:
                content(Path(tmp))
            except Exception as e:  # torch.save reports a full disk as a RuntimeError ("unexpected pos ...")
                if not isinstance(e, OSError) and _nearly_full(path.parent):
                    raise OSError(errno.ENOSPC, f"No space left on device (writing {path.name}: {type(e).__name__})", str(path)) from None
                raise
            fd = os.open(tmp, os.O_RDONLY)
        else:
            data = content.encode("utf-8") if isinstance(content, str) else content
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~file_mode_mask())
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB free where `folder` is: a library's failed write there was most likely a full disk."""
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return stat.f_bavail * stat.f_frsize < 2**20


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, content: Content) -> Path:
    """Replace `path` atomically with `content` (creating its folder if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _stage(path, content)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temps(folder: Path, suffix: str) -> list[Path]:
    """Delete the temporary files of writes to `folder` that a killed process never finished."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_MARK}{suffix}") if p.is_file()] if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class OutputFiles:
    """The files of one command, written together or not at all.

    `add` only records what to write; `commit` refuses (with one line naming the file) if a target exists
    and `overwrite` is off or it is a protected input (the prompt file), then stages every file and
    renames them into place. Folders it had to create are removed again if anything fails.
    """

    def __init__(self, overwrite: bool = False, protect: Iterable[str | os.PathLike | None] = ()):
        self.overwrite = overwrite
        self.protect = {Path(p).resolve() for p in protect if p and _exists(p)}
        self.planned: dict[Path, Content] = {}

    def add(self, path: str | os.PathLike, content: Content) -> Path:
        path = Path(path)
        if path.resolve() in {p.resolve() for p in self.planned}:
            raise ValueError(f"{path}: written twice by one command")
        self.planned[path] = content
        return path

    def check(self) -> None:
        """Fail before writing anything if a planned file may not be replaced."""
        for path in self.planned:
            if path.resolve() in self.protect:
                raise DataError(f"{path}: refusing to overwrite an input of this command; choose another --out")
            existing = next(p for p in path.parents if p.exists())
            if not existing.is_dir():
                raise DataError(f"{existing}: is a file, not a folder; choose another --out")
            if path.is_dir():
                raise DataError(f"{path}: is a folder; choose another --out")
            if path.exists() and not self.overwrite:
                raise DataError(f"{path}: already exists; pass --overwrite to replace it, or choose another --out")

    def commit(self) -> list[Path]:
        self.check()
        created: list[Path] = []
        staged: list[tuple[Path, Path]] = []
        try:
            for path in self.planned:
                created.extend(_make_folder(path.parent))
            for path, content in self.planned.items():
                staged.append((_stage(path, content), path))
            for tmp, path in staged:
                _place(tmp, path, self.overwrite)
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            for folder in reversed(created):
                try:
                    folder.rmdir()
                except OSError:
                    pass
            raise
        for folder in dict.fromkeys(p.parent for p in self.planned):
            _fsync_dir(folder)
        return list(self.planned)


def _place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the staged file into place; without `overwrite`, by a hard link, which fails if `path` appeared
    since `check` (another process wrote it: it must not be replaced silently)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DataError(
            f"{path}: appeared while this command ran (another process wrote it); kept it, choose another --out or pass --overwrite"
        ) from None
    except OSError:  # a filesystem without hard links: the checked rename
        if path.exists():
            raise DataError(f"{path}: appeared while this command ran (another process wrote it); kept it") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _exists(name: str | os.PathLike) -> bool:
    """Path.exists() for what may be text, not a path (a prompt too long to be a file name: ENAMETOOLONG)."""
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    for p in missing:
        if not p.exists():
            p.mkdir()
    return missing
