"""The error type for bad input the user can fix; the CLI prints its message as one line, exit code 2."""

from __future__ import annotations

import re
from collections.abc import Mapping

# A flag as messages write it (--top-k, --data.paths), with the placeholder of its value if one follows (--prompt FILE).
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_.-]*)(?: [A-Z]{2,}(?![\w=]))?")


class DataError(ValueError):
    """Bad input the user can fix: the message is one line naming the file or flag and the problem."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, or SIGTERM (`terminated`), stopped the work; the message says what was kept (the CLI prints it)."""

    def __init__(self, message: str = "", terminated: bool = False) -> None:
        super().__init__(message)
        self.terminated = terminated


def one_line(error: BaseException, *, with_type: bool = False, limit: int | None = None) -> str:
    """An exception's message on one line (library messages often span several), optionally cut short."""
    text = " ".join(str(error).split()) or ("no message" if with_type else type(error).__name__)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(error).__name__}: {text}" if with_type else text


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library messages often add pages of detail after it)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def option_names(text: str, renamed: Mapping[str, str] | None = None) -> str:
    """A message's flags (`--top-k`; `--prompt FILE`) as the options' names where no command line is in sight
    (`top_k`; `prompt`): for the Python API and the server, which pass the same checks' messages on. `renamed`:
    flags named otherwise there (`num-samples` is the API's `n`)."""
    renamed = renamed or {}
    return FLAG.sub(lambda m: renamed.get(m[1], m[1].replace("-", "_")), text)
