"""A request body checked against a served model's `Schema` (every POST).

Request bodies are flat JSON objects of the Python API's option names (`temperature`, `top_p`, a modality's
`bars` or `label`, ...) plus `num_samples` (or `n`), `prompt`, `conditions` and `stream`; the completions
endpoint also takes OpenAI's names (`max_tokens`, `n`). Only the core's sampling options and the modality's
own options are accepted: nothing that names a file, a checkpoint, a device or code (`out`, `draft`,
`config`, `checkpoint`, `modality`, ...) exists here. Every problem is a `RequestError` naming its field.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any

from arseq.modalities import Request, SamplingOptions
from arseq.serve.schema import MAX_SAMPLES, RANGES, Option, RequestError, Schema

if typing.TYPE_CHECKING:
    from arseq.serve.uploads import Upload

MAX_STOPS, MAX_STOP_CHARS = 4, 256  # stop strings per request (OpenAI's limit), characters per stop string
MAX_LOGPROBS = 5  # likeliest tokens a completion's `logprobs` may ask for at each position (OpenAI's limit)
ALIASES = {"n": "num_samples"}  # arseq's own endpoint takes OpenAI's short name for the count too
OPENAI_ALIASES = {**ALIASES, "max_tokens": "max_new_tokens"}
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
        aliases = OPENAI_ALIASES if openai else ALIASES
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
    else:
        for alias, name in ALIASES.items():
            if alias in body:
                body.setdefault(name, body.pop(alias))
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
