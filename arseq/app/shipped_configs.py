"""The configs that ship with arseq, by name: `--config music/bach_chorales` is configs/music/bach_chorales.yaml,
found beside the package in a checkout and inside it in an installed wheel (setup.py puts it there), so the
commands in the docs work after `pip install arseq` too. Only the listed names resolve: a name is never a path."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

from arseq.errors import DataError

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parents[1]


def folder() -> Path | None:
    """Where the shipped configs are: arseq/configs/ in a wheel, configs/ beside arseq/ in a checkout."""
    return next((f for f in (PACKAGE / "configs", PACKAGE.parent / "configs") if f.is_dir()), None)


def names() -> dict[str, Path]:
    """Each shipped config's name (modality/stem, e.g. music/bach_chorales) and its file."""
    root = folder()
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(root.glob("*/*.yaml"))} if root else {}


def find(value: str) -> Path | None:
    """The shipped config `value` names, written music/bach_chorales, with .yaml, or as the docs write it
    (configs/music/bach_chorales.yaml); None if it names none."""
    return names().get(value.removeprefix("configs/").removesuffix(".yaml"))


def summary(path: Path) -> str:
    """What a config trains: its header comment's first clause (up to a colon, semicolon or full stop outside
    parentheses)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = " ".join(line.lstrip("#").strip() for line in itertools.takewhile(lambda line: line.startswith("#"), lines))
    depth = 0
    for i, char in enumerate(header + " "):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char in ":;." and header[i + 1 : i + 2] in (" ", ""):
            return header[:i]
    return header


def with_shipped(argv: Sequence[str]) -> list[str]:
    """`argv` with each --config that is no file but a shipped config's name replaced by that config's path; one that
    is neither is a one-line error naming the shipped ones."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            at, prefix = i + 1, ""
        elif arg.startswith("--config="):
            at, prefix = i, "--config="
        else:
            continue
        value = out[at].removeprefix(prefix)
        if not value or Path(value).exists():
            continue
        path = find(value)
        if path is None:
            shipped = ", ".join(names()) or "none here"
            raise DataError(f"--config {value}: no such file, nor a shipped config (shipped: {shipped}; 'arseq configs' shows them)")
        log.info("--config %s: no such file here, so arseq's shipped config %s", value, path)
        out[at] = prefix + str(path)
    return out
