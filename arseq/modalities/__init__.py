"""Modality registry: the built-ins plus any package's `arseq.modalities` entry points.

A config names a modality by registered name (`text`) or by import path (`my_pkg.dna:DnaModality`).
A plugin that fails to load is reported in one warning and skipped; it never breaks the others.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib import metadata

from arseq.errors import one_line
from arseq.modalities.base import (
    Constraint,
    Controls,
    DataError,
    EvalInputs,
    Example,
    Fim,
    MiddleView,
    Modality,
    OutputFiles,
    Plan,
    PrefixCounts,
    Request,
    RowState,
    Sample,
    SamplingConfig,
    SamplingOptions,
    Skipped,
    TokenSeqs,
)

__all__ = [
    "Constraint",
    "Controls",
    "DataError",
    "EvalInputs",
    "Example",
    "Modality",
    "OutputFiles",
    "Fim",
    "MiddleView",
    "Plan",
    "PrefixCounts",
    "Request",
    "RowState",
    "Sample",
    "SamplingConfig",
    "SamplingOptions",
    "Skipped",
    "TokenSeqs",
    "PluginWarning",
    "Registered",
    "loadable",
    "registered",
    "resolve",
]

BUILTIN = {
    "text": "arseq.modalities.text:TextModality",
    "music": "arseq.modalities.music:MusicModality",
    "image": "arseq.modalities.image:ImageModality",
    "protein": "arseq.modalities.protein:ProteinModality",
}
ENTRY_POINT_GROUP = "arseq.modalities"


class PluginWarning(UserWarning):
    """A modality plugin was skipped; the message is one line naming it."""


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
    """Every modality name that can be used, built-ins first; a plugin reusing a taken name is ignored with a warning."""
    found = {n: Registered(n, t, "arseq", _arseq_version()) for n, t in BUILTIN.items()}
    try:
        entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as e:  # broken package metadata on sys.path must not take the built-ins down
        warnings.warn(f"modality plugins not loaded: {one_line(e, with_type=True)}", PluginWarning, stacklevel=2)
        return found
    for ep in entry_points:
        try:
            dist = getattr(ep, "dist", None)
            entry = Registered(ep.name, ep.value, dist.name if dist else "?", (dist.version if dist else None) or "?")
        except Exception as e:
            warnings.warn(
                f"modality plugin {ep.name!r} ignored: unreadable package metadata ({one_line(e, with_type=True)})", PluginWarning, stacklevel=2
            )
            continue
        if ep.name in found:
            taken = found[ep.name]
            warnings.warn(
                f"modality plugin {ep.name!r} ({ep.value}) from {entry.package} ignored: the name is taken by {taken.target} from {taken.package}",
                PluginWarning,
                stacklevel=2,
            )
            continue
        found[ep.name] = entry
    return found


def _import(target: str) -> type[Modality]:
    module, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    if not module or not attr:
        raise DataError(f"modality {target!r}: expected a registered name or 'package.module:Class'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except Exception as e:  # a plugin's import error must not become our traceback
        raise DataError(f"modality {target!r} failed to load: {one_line(e, with_type=True)}") from None
    if not (isinstance(obj, type) and issubclass(obj, Modality)):
        raise DataError(f"modality {target!r} is not a subclass of arseq.modalities.Modality")
    missing = sorted(getattr(obj, "__abstractmethods__", ()))
    if missing:
        raise DataError(f"modality {target!r} does not implement {', '.join(m + '()' for m in missing)}")
    if not obj.name or not isinstance(obj.name, str):
        raise DataError(f"modality {target!r} sets no name (the class attribute checkpoints record)")
    return obj


def _load(entry: Registered) -> type[Modality]:
    try:
        cls = _import(entry.target)
    except DataError as e:
        raise DataError(f"modality {entry.name!r} from {entry.package}: {e}") from None
    if cls.name != entry.name:  # checkpoints record cls.name and resolve it again when loaded
        raise DataError(f"modality {entry.name!r} ({entry.target}) has name {cls.name!r}; it must equal the registered name")
    return cls


def resolve(name: str, allow_import: bool = True) -> type[Modality]:
    """The Modality class for a registered name or, when `allow_import`, an import path.

    Names read from a checkpoint or an export come with `allow_import=False`: a file must never make
    arseq import a module the user did not choose (`this:Modality` would run `this` on import).
    """
    entries = registered()
    if name in entries:
        return _load(entries[name])
    if "." in name or ":" in name:
        if not allow_import:
            raise DataError(
                f"modality {name!r} is an import path stored in the file; arseq imports only registered modalities "
                f"({', '.join(sorted(entries))}) from files: pass --modality {name} or --trust-modality-import to allow it"
            )
        return _import(name)
    raise DataError(f"unknown modality {name!r}; registered: {', '.join(sorted(entries))}")


def loadable() -> list[tuple[Registered, type[Modality]]]:
    """Registered modalities that load; each one that does not is reported in one warning."""
    ok = []
    for entry in registered().values():
        try:
            ok.append((entry, _load(entry)))
        except DataError as e:
            warnings.warn(f"skipping {e}", PluginWarning, stacklevel=2)
    return ok
