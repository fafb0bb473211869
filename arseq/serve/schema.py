"""What a served model accepts, described (`GET /v1/model`) and checked (every POST body).

Request bodies are flat JSON objects of the Python API's option names (`temperature`, `top_p`, a modality's
`bars` or `label`, ...) plus `num_samples` (or `n`), `prompt`, `conditions` and `stream`; the completions
endpoint also takes OpenAI's names (`max_tokens`, `n`). Only the core's sampling options and the modality's
own options are accepted: nothing that names a file, a checkpoint, a device or code (`out`, `draft`,
`config`, `checkpoint`, `modality`, ...) exists here. Every problem is a `RequestError` naming its field.
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

if typing.TYPE_CHECKING:
    from arseq.serve.uploads import Upload

MAX_SAMPLES = 64  # samples per request
MAX_SEED = 2**63 - 1
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # stop strings per request (OpenAI's limit), characters per stop string
MAX_LOGPROBS = 5  # likeliest tokens a completion's `logprobs` may ask for at each position (OpenAI's limit)
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
OPENAI_ALIASES = {"max_tokens": "max_new_tokens", "n": "num_samples"}
# OpenAI fields taken and ignored (`model` is taken before: arseq.serve.models), and those refused unless they
# are left at their neutral value
IGNORED = {"user"}
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""),
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
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


@dataclass
class Parsed:
    """A checked request: the core's Request (no `out` yet), token-id prompts, and how to answer."""

    request: Request
    stream: bool = False
    token_prompt: list[int] | None = None
    stop: list[str] = field(default_factory=list)  # completions: stop strings (arseq.serve.stops)
    echo: bool = False  # completions: the answer's text starts with the prompt's
    logprobs: int | None = None  # completions: each token's log-probability and the likeliest this many (arseq.serve.logprobs)
    score_only: bool = False  # completions: `max_tokens: 0` with `echo` and `logprobs`: the prompt scored, nothing sampled
    prompt_file: Upload | None = None  # generate: an uploaded prompt file, its bytes (each planning writes its own copy)


def _check_value(opt: Option, value: Any, where: str) -> Any:
    if value is None:
        if opt.nullable:
            return None
        raise RequestError(400, f"{where}: must not be null", where)
    if opt.type == "boolean" and not isinstance(value, bool):
        raise RequestError(400, f"{where}: expected true or false, got {value!r}", where)
    if opt.type == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RequestError(400, f"{where}: expected an integer, got {value!r}", where)
    if opt.type == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            raise RequestError(400, f"{where}: expected a number, got {value!r}", where)
        value = float(value)
    if opt.type == "string" and not isinstance(value, str):
        raise RequestError(400, f"{where}: expected a string, got {value!r}", where)
    if opt.choices is not None and value not in opt.choices:
        raise RequestError(422, f"{where}: must be one of {', '.join(map(str, opt.choices))}, got {value!r}", where)
    if opt.type in ("integer", "number"):
        lo, hi, open_lo = RANGES.get(opt.name, (opt.minimum, opt.maximum, False))
        if opt.name == "max_new_tokens":
            lo, hi = opt.minimum, opt.maximum
        if lo is not None and (value < lo or (open_lo and value == lo)) or hi is not None and value > hi:
            low = f"> {lo:g}" if open_lo else f">= {lo:g}"
            raise RequestError(422, f"{where}: must be {low} and <= {hi:g}, got {value!r}", where)
    return value


def parse(schema: Schema, body: Any, openai: bool = False) -> Parsed:
    """A request body checked against the schema; RequestError (4xx) naming the field otherwise, by the name the
    request gave it (an OpenAI client that sent `max_tokens` reads `max_tokens`, not arseq's `max_new_tokens`)."""
    try:
        return _parse(schema, body, openai)
    except RequestError as e:
        aliases = OPENAI_ALIASES if openai else {"n": "num_samples"}
        sent = {name: alias for alias, name in aliases.items() if isinstance(body, dict) and alias in body}
        if e.field not in sent or not str(e).startswith(f"{e.field}:"):
            raise
        alias = sent[e.field]
        raise RequestError(e.status, alias + str(e).removeprefix(e.field), alias, e.headers) from None


def _parse(schema: Schema, body: Any, openai: bool) -> Parsed:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", None)
    body = dict(body)
    stream = body.pop("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream: expected true or false, got {stream!r}", "stream")
    stop, echo = _stop_and_echo(schema, body.pop("stop", None), body.pop("echo", None)) if openai else ([], False)
    logprobs = _logprobs(schema, body.pop("logprobs", None), stream) if openai else None
    if openai:
        _openai_names(body)
    elif "n" in body:
        body.setdefault("num_samples", body.pop("n"))
    score_only = _score_only(body, echo, logprobs)
    num = body.pop("num_samples", 1)
    if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_SAMPLES:
        raise RequestError(
            422 if isinstance(num, int) and not isinstance(num, bool) else 400,
            f"num_samples: expected an integer from 1 to {MAX_SAMPLES}, got {num!r}",
            "num_samples",
        )
    prompt, token_prompt = body.pop("prompt", None), None
    conditions = _conditions(schema, body.pop("conditions", None))
    values: dict[str, Any] = {}
    for key, value in body.items():
        opt = schema.options.get(key)
        if opt is None:
            known = ", ".join(["num_samples", "prompt", "conditions", "stream", *schema.options])
            raise RequestError(400, f"{key}: unknown option; known: {known}", key)
        values[key] = _check_value(opt, value, key)
    sampling = SamplingOptions(**{f.name: values.get(f.name) for f in fields(SamplingOptions)})
    cls = schema.loaded.modality.generate_options
    own = {k: v for k, v in values.items() if k not in schema.options or schema.options[k].group != "sampling"}
    options = cls(**own) if cls is not None else None
    if isinstance(prompt, list):
        token_prompt = _token_prompt(schema, prompt)
        prompt = None
    elif prompt is not None:
        prompt = _text_prompt(schema, prompt, options)
    request = Request(num_samples=num, prompt=prompt, sampling=sampling, options=options, conditions=conditions)
    return Parsed(request, stream, token_prompt, stop, echo, logprobs, score_only)


def _openai_names(body: dict[str, Any]) -> None:
    """OpenAI's fields in `body` as arseq's names; those ignored dropped, those refused unless neutral checked."""
    for key in IGNORED:
        body.pop(key, None)
    for key, neutral in NEUTRAL.items():
        if key in body and body.pop(key) not in neutral:
            raise RequestError(422, f"{key}: not supported by this server (leave it out)", key)
    for alias, name in OPENAI_ALIASES.items():
        if alias in body:
            if name in body:
                raise RequestError(400, f"{alias}: give {alias} or {name}, not both", alias)
            body[name] = body.pop(alias)


def _stop_and_echo(schema: Schema, stop: Any, echo: Any) -> tuple[list[str], bool]:
    """OpenAI's `stop` (a string or a list of up to MAX_STOPS) and `echo`, for models whose samples are text."""
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError(400, f"stop: expected a string or a list of up to {MAX_STOPS} strings, got {type(stop).__name__}", "stop")
    if len(stops) > MAX_STOPS:
        raise RequestError(422, f"stop: at most {MAX_STOPS} stop strings, got {len(stops)}", "stop")
    if not all(0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise RequestError(422, f"stop: each stop string must have 1 to {MAX_STOP_CHARS} characters", "stop")
    if echo is not None and not isinstance(echo, bool):
        raise RequestError(400, f"echo: expected true or false, got {echo!r}", "echo")
    for key, given in (("stop", stops), ("echo", echo)):
        if given:
            _text_only(schema, key)
    return stops, bool(echo)


def _text_only(schema: Schema, key: str) -> None:
    """A 422 naming `key` unless the model's samples are text."""
    if not schema.text_samples:
        raise RequestError(422, f"{key}: a {schema.loaded.modality.name} model's samples are not text; leave {key} out", key)


def _logprobs(schema: Schema, value: Any, stream: bool) -> int | None:
    """OpenAI's `logprobs`: an integer 0..MAX_LOGPROBS (how many likeliest tokens to list at each position); null
    or false: none. Not with `stream`: the log-probabilities come from a pass of the model after the sample ends."""
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"logprobs: expected an integer from 0 to {MAX_LOGPROBS} or null, got {value!r}", "logprobs")
    if not 0 <= value <= MAX_LOGPROBS:
        raise RequestError(422, f"logprobs: must be from 0 to {MAX_LOGPROBS}, got {value}", "logprobs")
    _text_only(schema, "logprobs")
    if stream:
        raise RequestError(422, "logprobs: not available with stream: true (ask without streaming)", "logprobs")
    return value


def _score_only(body: dict[str, Any], echo: bool, logprobs: int | None) -> bool:
    """Whether the request only scores its prompt (`max_tokens: 0` with `echo` and `logprobs`, as evaluation tools
    ask for a text's log-likelihood); `max_tokens` is then taken out of `body`. Without both, 0 stays an error."""
    given = body.get("max_new_tokens")
    if given != 0 or isinstance(given, bool) or not echo or logprobs is None:
        return False
    del body["max_new_tokens"]
    return True


def _conditions(schema: Schema, given: Any) -> list[str]:
    if given is None:
        return []
    if not isinstance(given, dict):
        raise RequestError(400, f"conditions: expected an object of field: value, got {given!r}", "conditions")
    if given and not schema.conditions:
        raise RequestError(422, "conditions: this model was trained without conditions", "conditions")
    out = []
    for name, value in given.items():
        where = f"conditions.{name}"
        if name not in schema.conditions:
            raise RequestError(422, f"{where}: unknown condition field; known: {', '.join(schema.conditions)}", where)
        if value is None:
            continue
        if not isinstance(value, str) or value not in schema.conditions[name]:
            raise RequestError(422, f"{where}: {value!r} was never seen in training; known: {', '.join(schema.conditions[name])}", where)
        out.append(f"{name}={value}")
    return out


def _token_prompt(schema: Schema, ids: list[Any]) -> list[int]:
    vocab = schema.loaded.tokenizer.vocab_size  # the modality's own ids: control tokens come from `conditions`
    if not ids or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
        raise RequestError(422, f"prompt: token ids must be a non-empty list of integers in [0, {vocab})", "prompt")
    room = schema.loaded.model.cfg.max_seq_len - (schema.loaded.controls.width if schema.loaded.controls else 0) - 2
    if len(ids) > room:
        raise RequestError(422, f"prompt: {len(ids)} tokens; this model's context allows at most {room}", "prompt")
    return ids


def _text_prompt(schema: Schema, prompt: Any, options: Any) -> str | None:
    if not isinstance(prompt, str):
        raise RequestError(400, f"prompt: expected a string or a list of token ids, got {type(prompt).__name__}", "prompt")
    kind = schema.prompt_kind
    if kind is None:
        raise RequestError(
            422,
            f"prompt: a {schema.loaded.modality.name} model's prompt is a file: send it as prompt_file, or send token ids",
            "prompt",
        )
    room = schema.loaded.model.cfg.max_seq_len - (schema.loaded.controls.width if schema.loaded.controls else 0) - 2
    if len(prompt) > 8 * room:  # before encoding anything large
        raise RequestError(422, f"prompt: {len(prompt)} characters, more than this model's context of {room} tokens holds", "prompt")
    try:
        n = len(schema.loaded.tokenizer.encode(prompt)) if kind == "text" else len(prompt)
    except ValueError as e:
        raise RequestError(422, f"prompt: {e}", "prompt") from None
    if n > room:
        raise RequestError(422, f"prompt: {n} tokens; this model's context allows at most {room}", "prompt")
    if kind == "motif":  # a protein prompt is a motif: given as `prefix`, which is never read as a file
        if options.prefix:
            raise RequestError(422, "prompt: give the start motif as prompt or prefix, not both", "prompt")
        options.prefix = prompt or None
        return None
    return prompt
