"""What a served model accepts, described (`GET /v1/model`): its options (the core's sampling options and the
modality's own), their types and ranges, its conditions and prompt kind; and `RequestError`, how the server
refuses. Checking a body against it: arseq.serve.request_body.
"""

from __future__ import annotations

import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal

from arseq.app.planning import make_plan
from arseq.artifacts.checkpoint import Loaded
from arseq.decode import SamplingConfig
from arseq.modalities import Request, SamplingOptions

MAX_SAMPLES = 64  # samples per request
MAX_SEED = 2**63 - 1
TEXT_MODALITIES = ("text", "protein")  # whose tokenizers decode samples to text (jobs.text_of)
# built-in modalities whose plan reads `request.prompt` as a file (arseq.serve.uploads); a plugin's plan may read
# it as anything, so a plugin takes no prompt file
FILE_PROMPT_MODALITIES = ("music", "image")
# Humdrum and ABC go to music21's hand-written text parsers, whose time on a hostile file nothing bounds here
# (planning runs off the main thread, out of the per-file time limit's reach): a request sends MIDI, checked
# before parsing, or MusicXML (an XML parser's linear time on at most max_body_bytes).
NOT_UPLOADED = (".krn", ".abc")
# (lowest, highest, lowest excluded) of the core's sampling options
RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 100.0, False),
    "top_k": (1, 2**31, False),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "repetition_penalty": (0.0, 100.0, True),
    "guidance": (0.0, 100.0, False),
    "seed": (0, MAX_SEED, False),
}


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, the `field` at fault (or None), one line."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "field": self.field, "code": self.status}}


def arg_help(cls: type) -> dict[str, str]:
    """A dataclass's `Args:` docstring section, one line per field."""
    doc = cls.__doc__ or ""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s+(\w+): (.+(?:\n\s{12,}.+)*)", section, re.M):
        out[m.group(1)] = " ".join(m.group(2).split())
    return out


@dataclass
class Option:
    name: str
    type: str  # integer, number, boolean, string
    group: str  # sampling or the modality's name
    default: Any = None
    choices: list[Any] | None = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = True


def _option(name: str, hint: Any, group: str, default: Any, help: str) -> Option:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    nullable = type(None) in typing.get_args(hint)
    if typing.get_origin(base) is Literal:
        return Option(name, "string", group, default, list(typing.get_args(base)), help, nullable=nullable)
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(base)
    if kind is None:
        raise TypeError(f"option {name}: type {hint} cannot be given over HTTP")
    lo, hi, _ = RANGES.get(name, (None, None, False))
    return Option(name, kind, group, default, None, help, lo, hi, nullable)


def _default(f: Any) -> Any:
    return f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)


@dataclass
class Schema:
    """The options a served model takes, its conditions and limits."""

    loaded: Loaded
    max_new_tokens_limit: int
    options: dict[str, Option] = field(default_factory=dict)
    conditions: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        modality = self.loaded.modality
        effective = asdict(SamplingConfig())
        effective.update(self.sampling_defaults())
        helps = arg_help(SamplingOptions)
        for f in fields(SamplingOptions):
            self.options[f.name] = _option(
                f.name, typing.get_type_hints(SamplingOptions)[f.name], "sampling", effective.get(f.name), helps.get(f.name, "")
            )
        self.options["max_new_tokens"].minimum, self.options["max_new_tokens"].maximum = 1, self.max_new_tokens_limit
        if self.options["max_new_tokens"].default is not None:
            self.options["max_new_tokens"].default = min(self.options["max_new_tokens"].default, self.max_new_tokens_limit)
        cls = modality.generate_options
        if cls is not None:
            helps = arg_help(cls)
            for f in fields(cls):
                self.options[f.name] = _option(f.name, typing.get_type_hints(cls)[f.name], modality.name, _default(f), helps.get(f.name, ""))
        controls = self.loaded.controls
        self.conditions = {k: list(v) for k, v in controls.fields.items()} if controls is not None else {}

    def sampling_defaults(self) -> dict[str, Any]:
        """The modality's sampling defaults for an unconditioned request (conditioned ones add `conditioned_sampling`)."""
        try:
            planned = make_plan(self.loaded, Request(num_samples=1))
        except Exception:  # a plugin whose plan needs options: the core's defaults
            return {}
        out = {k: v for k, v in asdict(planned.cfg).items() if k != "stop_tokens"}
        if planned.plan.new_tokens is not None:
            out["max_new_tokens"] = planned.plan.new_tokens
        return out

    @property
    def text_samples(self) -> bool:
        """Whether this model's samples are text (`stop` and `echo` need it)."""
        return self.loaded.modality.name in TEXT_MODALITIES

    @property
    def prompt_kind(self) -> str | None:
        """What a text `prompt` is for this model: text to continue, a protein motif, or nothing (a file would be)."""
        return {"text": "text", "protein": "motif"}.get(self.loaded.modality.name)

    @property
    def prompt_suffixes(self) -> tuple[str, ...]:
        """The suffixes of the prompt files this model reads (`prompt_file`); () when it reads none."""
        modality = self.loaded.modality
        builtin = type(modality).__module__.startswith("arseq.modalities.") and modality.name in FILE_PROMPT_MODALITIES
        return tuple(s.lower() for s in modality.suffixes if s.lower() not in NOT_UPLOADED) if builtin else ()

    def describe(self, name: str, limits: dict[str, Any]) -> dict[str, Any]:
        loaded = self.loaded
        modality = loaded.modality
        return {
            "id": name,
            "object": "model",
            "modality": modality.name,
            "context": loaded.model.cfg.max_seq_len,
            "vocab_size": loaded.model.cfg.vocab_size,
            "conditions": self.conditions,
            "conditioned_sampling": dict(modality.conditioned_sampling) if self.conditions else {},
            "options": [asdict(o) for o in self.options.values()],
            "prompt": self.prompt_kind,
            "prompt_file": list(self.prompt_suffixes) or None,
            "limits": {"max_samples": MAX_SAMPLES, "max_new_tokens": self.max_new_tokens_limit, **limits},
        }
