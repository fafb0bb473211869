"""Modality registry: the built-ins plus any package's `arseq.modalities` entry points.

A config names a modality by registered name (`text`) or by import path (`my_pkg.dna:DnaModality`).
A plugin that fails to load is reported in one warning and skipped; it never breaks the others.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata

from arseq.modalities.base import (
    Constraint,
    DataError,
    EvalInputs,
    Example,
    Modality,
    Sample,
    Skipped,
)

__all__ = [
    "Constraint", "DataError", "EvalInputs", "Example", "Modality", "Sample", "Skipped",
    "Registered", "registered", "resolve",
]

BUILTIN = {
    "text": "arseq.modalities.text:TextModality",
    "music": "arseq.modalities.music:MusicModality",
}
ENTRY_POINT_GROUP = "arseq.modalities"


@dataclass(frozen=True)
class Registered:
    name: str
    target: str  # "module:Class"
    package: str
    version: str


def _arseq_version() -> str:
    try:
        return metadata.version("arseq")
    except metadata.PackageNotFoundError:
        return "dev"


def registered() -> dict[str, Registered]:
    """Every modality name that can be used, built-ins first; plugins cannot shadow a built-in."""
    found = {n: Registered(n, t, "arseq", _arseq_version()) for n, t in BUILTIN.items()}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            warnings.warn(f"modality plugin {ep.name!r} from {ep.value} ignored: the name is taken", stacklevel=2)
            continue
        dist = getattr(ep, "dist", None)
        found[ep.name] = Registered(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
    return found


def _import(target: str) -> type:
    module, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    if not module or not attr:
        raise DataError(f"modality {target!r}: expected a registered name or 'package.module:Class'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except Exception as e:  # a plugin's import error must not become our traceback
        raise DataError(f"modality {target!r} failed to load: {type(e).__name__}: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, Modality)):
        raise DataError(f"modality {target!r} is not a subclass of arseq.modalities.Modality")
    for method in ("build_tokenizer", "read", "write"):
        if getattr(obj, method) is getattr(Modality, method):
            raise DataError(f"modality {target!r} does not implement {method}()")
    return obj


def resolve(name: str) -> type[Modality]:
    """The Modality class for a registered name or an import path."""
    entries = registered()
    if name in entries:
        return _import(entries[name].target)
    if "." in name or ":" in name:
        return _import(name)
    raise DataError(f"unknown modality {name!r}; registered: {', '.join(sorted(entries))}")


def loadable() -> list[tuple[Registered, type[Modality]]]:
    """Registered modalities that load; each one that does not is reported in one warning."""
    ok = []
    for entry in registered().values():
        try:
            ok.append((entry, _import(entry.target)))
        except DataError as e:
            warnings.warn(f"skipping modality {entry.name!r} from {entry.package}: {e}", stacklevel=2)
    return ok
