"""`arseq VERB ...`: find the verb in the table (arseq.app.verbs), run it, and turn user errors into one line
(exit 2) and interruptions into 130/143."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Sequence

import arseq
from arseq.app.verbs import OWN_SIGNALS, VERBS
from arseq.errors import DataError, Interrupted, one_line

EPILOG = "Run 'arseq VERB --help' for the options of a verb."


def usage() -> str:
    width = max(map(len, VERBS))
    lines = "\n".join(f"  {v:<{width}}  {verb.help}" for v, verb in VERBS.items())
    return (
        f"usage: arseq [--version] [--quiet | --verbose] VERB [options]\n\nTrain and sample autoregressive transformers on text, "
        f"music, images and proteins.\n\nverbs:\n{lines}\n\n{EPILOG}"
    )


class StderrHandler(logging.StreamHandler):
    """A handler writing to the current `sys.stderr` (replaced by pytest's capsys, or by a caller redirecting it)."""

    arseq_cli = True

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


def configure_logging(argv: list[str]) -> list[str]:
    """arseq's progress and notes go to stderr through `logging` (INFO; --verbose: DEBUG; --quiet: warnings only);
    stdout is for results."""
    level = logging.INFO
    while argv and argv[0] in ("-q", "--quiet", "-v", "--verbose"):
        level = logging.WARNING if argv.pop(0) in ("-q", "--quiet") else logging.DEBUG
    logger = logging.getLogger("arseq")
    logger.setLevel(level)
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler())
    return argv


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM, raised where the process is: the cleanup of writes in progress runs (temporary files, claims,
    prepare's entry folder) as for Ctrl-C, where the default action left hundreds of hidden temp files."""
    raise Interrupted(terminated=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = configure_logging(list(sys.argv[1:] if argv is None else argv))
    if argv[:1] in (["-V"], ["--version"]):
        print(f"arseq {arseq.__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        print(usage())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\narseq: error: unknown verb {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    verb, rest = argv[0], argv[1:]
    previous = None
    if verb not in OWN_SIGNALS and threading.current_thread() is threading.main_thread():  # they have their own
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        module, _, function = VERBS[verb].target.partition(":")
        run = getattr(importlib.import_module(module), function)
        return run(rest)
    except (DataError, ValueError, OSError, RecursionError) as e:  # OSError: full disk, name too long, not a folder...
        if os.environ.get("ARSEQ_DEBUG"):
            raise
        print(f"arseq {verb}: error: {one_line(e, limit=1000)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError (OutOfMemoryError on CUDA)
        if os.environ.get("ARSEQ_DEBUG") or not (isinstance(e, MemoryError) or "allocate" in str(e) or "out of memory" in str(e)):
            raise
        print(f"arseq {verb}: error: out of memory (a size from a file or a flag is larger than this machine can hold)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Interrupted) and e.terminated
        print(f"arseq {verb}: {'terminated' if terminated else 'interrupted'}{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
