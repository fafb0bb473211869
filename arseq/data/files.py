"""Turn `data.paths` (a file, folder, glob, or a list of them) into a sorted list of files."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

from arseq.errors import DataError


def expand_paths(paths: str | Sequence[str] | None, suffixes: Sequence[str] = (), what: str = "data.paths") -> list[Path]:
    """Files named by `paths`. Folders are searched recursively for `suffixes` (all files if empty)."""
    if paths is None:
        return []
    entries = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not entries:
        raise DataError(f"{what} is empty")
    suffixes = tuple(s.lower() for s in suffixes)
    files: list[Path] = []
    for entry in entries:
        entry = str(Path(entry).expanduser())
        if glob.has_magic(entry):
            matched = [Path(p) for p in sorted(glob.glob(entry, recursive=True)) if Path(p).is_file()]
            if not matched:
                raise DataError(f"{entry}: the pattern matches no file ({what})")
            files.extend(matched)
        elif Path(entry).is_dir():
            found = sorted(
                p
                for p in Path(entry).rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(entry).parts)
                and (not suffixes or p.name.lower().endswith(suffixes))
            )
            if not found:
                kinds = f" with suffix {'/'.join(suffixes)}" if suffixes else ""
                raise DataError(f"{entry}: folder holds no file{kinds} ({what})")
            files.extend(found)
        elif Path(entry).is_file():
            files.append(Path(entry))
        else:
            raise DataError(f"{entry}: no such file or folder ({what})")
    return list(dict.fromkeys(p.resolve() for p in files))
