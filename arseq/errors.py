"""The error type for bad input the user can fix; the CLI prints its message as one line, exit code 2."""

from __future__ import annotations


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
