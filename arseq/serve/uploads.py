"""A prompt file sent with a request (`prompt_file: {"name": "piece.mid", "data": "<base64>"}`), read as
`arseq generate --prompt FILE` reads one.

The modalities read prompts from paths, so the bytes are written to a private temporary folder (mkdtemp, 0700)
under a fixed name with the upload's checked suffix: the client's name is used for its suffix alone and never
becomes a path. The folder lives only while the modality plans (`planned`) and is removed whatever happens;
the modality's plan keeps what writing the files needs (music's piece to infill, an image's pixels), so the
file is not needed after. A request is planned twice under `arseq serve` (in the server's process, to refuse
early, and in the engine process): the checked request carries the bytes, and each planning writes its own file.
"""

from __future__ import annotations

import base64
import binascii
import logging
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from arseq.app.planning import Planned, make_plan
from arseq.artifacts.checkpoint import Loaded
from arseq.errors import FLAG, one_line, option_names
from arseq.modalities import DataError, SamplingOptions
from arseq.serve.request_body import Parsed
from arseq.serve.schema import FILE_PROMPT_MODALITIES, RequestError, Schema

log = logging.getLogger(__name__)
FIELD = "prompt_file"


@dataclass(frozen=True)
class Upload:
    """An uploaded prompt file's bytes and the suffix it is read by (the client's file name goes no further)."""

    suffix: str
    data: bytes


def take_upload(schema: Schema, body: Any) -> tuple[Any, Upload | None]:
    """`prompt_file` taken out of a request body and checked (4xx naming it), and the body without it: a malformed
    one is a 400 whatever the model, then a model that reads no prompt file refuses a well-formed one (422)."""
    if not isinstance(body, dict) or FIELD not in body:
        return body, None
    body = dict(body)
    given = body.pop(FIELD)
    if given is None:
        return body, None
    if body.get("prompt") is not None:
        raise RequestError(400, f"{FIELD}: give a prompt file or a prompt, not both", FIELD)
    if not isinstance(given, dict) or set(given) != {"name", "data"} or not all(isinstance(v, str) for v in given.values()):
        raise RequestError(400, f'{FIELD}: expected {{"name": "piece.mid", "data": "<base64>"}}', FIELD)
    suffixes = schema.prompt_suffixes
    if not suffixes:
        raise RequestError(422, f"{FIELD}: a {schema.loaded.modality.name} model reads no prompt file{_instead(schema)}", FIELD)
    suffix = PurePosixPath(given["name"].replace("\\", "/")).suffix.lower()
    if suffix not in suffixes:
        got = f"not {suffix!r}" if suffix else "the name has none"
        raise RequestError(422, f"{FIELD}: a {schema.loaded.modality.name} model reads {' '.join(suffixes)}; {got}", FIELD)
    try:
        data = base64.b64decode(given["data"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{FIELD}: data is not base64", FIELD) from None
    if not data:
        raise RequestError(400, f"{FIELD}: the file is empty", FIELD)
    return body, Upload(suffix, data)


def _instead(schema: Schema) -> str:
    kind = schema.prompt_kind
    return f"; send the {'start motif' if kind == 'motif' else 'text'} as prompt" if kind else ""


@contextmanager
def written(upload: Upload) -> Iterator[Path]:
    """The upload as a file in a private temporary folder (0700) under a fixed name, removed on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="arseq-prompt-"))
    try:
        path = folder / f"prompt{upload.suffix}"
        with open(path, "xb") as f:
            f.write(upload.data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def planned(loaded: Loaded, parsed: Parsed) -> Planned:
    """The modality's plan of a request, with its uploaded prompt file (if any) read as `--prompt FILE` is.
    A refusal is a 422 naming what the modality's message names: the prompt file (its temporary path replaced
    by `prompt_file`) or an option (`--prompt-bars needs --prompt FILE`: `prompt_bars`)."""
    if parsed.prompt_file is None:
        return _refusals(loaded, lambda: make_plan(loaded, parsed.request), None)
    with written(parsed.prompt_file) as path:
        request = replace(parsed.request, prompt=str(path))
        return _refusals(loaded, lambda: make_plan(loaded, request), path)


def _refusals(loaded: Loaded, plan: Any, path: Path | None) -> Planned:
    """`plan()`, its DataError/ValueError as a RequestError naming the field at fault. With a prompt file, any
    other exception is the file's too: a reader that a hostile file breaks in a way its checks did not foresee."""
    try:
        return plan()
    except (DataError, ValueError) as e:
        message = one_line(e)
        fields = {"prompt": FIELD} if loaded.modality.name in FILE_PROMPT_MODALITIES else {}  # its flags as the request's fields
        if path is not None and str(path.parent) in message:
            raise RequestError(422, option_names(_unpathed(message, path), fields), FIELD) from None
        flag = FLAG.match(message)
        name = flag.group(1).replace("-", "_") if flag else None
        raise RequestError(422, option_names(message, fields), name if name in _option_names(loaded) else None) from None
    except RequestError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring; logged, as the server's own failures are
        if path is None:
            raise
        log.warning("an uploaded prompt file broke its reader: %s", one_line(e), exc_info=e)
        raise RequestError(422, f"{FIELD}: cannot read the file ({_unpathed(one_line(e, with_type=True, limit=200), path)})", FIELD) from None


def _unpathed(message: str, path: Path) -> str:
    """A reader's message with the temporary file's path as `prompt_file` (the server's folders stay its own)."""
    out = message.replace(str(path), FIELD).replace(str(path.parent), FIELD)
    return out if out.startswith(FIELD) else f"{FIELD}: {out}"


def _option_names(loaded: Loaded) -> set[str]:
    own = loaded.modality.generate_options
    return {f.name for f in fields(SamplingOptions)} | ({f.name for f in fields(own)} if own is not None else set())
