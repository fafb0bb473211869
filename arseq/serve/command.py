"""`arseq serve --checkpoint RUN_OR_CKPT_OR_EXPORT`: the HTTP server (uvicorn), until SIGTERM or SIGINT.

On a signal uvicorn stops accepting connections and lets running requests finish for `--grace` seconds,
after which they are cancelled; then the engine loop stops and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

from jsonargparse import ArgumentParser

from arseq.app.options import parse_verb, verb_parser
from arseq.app.run_options import RunOptions
from arseq.artifacts import checkpoint
from arseq.errors import DataError

log = logging.getLogger("arseq.serve")


@dataclass
class ServeOptions:
    """server

    Args:
        host: address to bind (default 127.0.0.1: this machine only)
        port: TCP port
        slots: rows decoding at once (one per sample; guided samples take two)
        max_queue: requests waiting past this get 429 with Retry-After
        max_new_tokens_limit: most tokens one sample may ask for
        timeout: seconds a request may take, queue included (0: none)
        max_body_bytes: largest request body accepted (413 past it)
        grace: on SIGTERM/SIGINT: seconds running requests get to finish
        threads: torch threads for the model on a CPU (default: the usable cores but one, at least one; the HTTP side needs the other)
        stream_interval: milliseconds a stream's tokens may wait to go out together (a request's first token and its end go at once); 0: every token as it comes
        name: the model's name in responses (default: the checkpoint's modality)
        log_level: debug, info, warning or error
    """

    host: str = "127.0.0.1"
    port: int = 8000
    slots: int = 8
    max_queue: int = 64
    max_new_tokens_limit: int = 4096
    timeout: float = 600.0
    max_body_bytes: int = 1 << 20
    grace: float = 30.0
    threads: int | None = None
    stream_interval: float = 10.0
    name: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def parser() -> ArgumentParser:
    p = verb_parser(
        "arseq serve",
        "an HTTP server with continuous batching: OpenAI completions, arseq's /v1/generate (the modality's files), metrics and a web page at /",
    )
    p.add_class_arguments(ServeOptions, None, as_group=True)
    # how the model runs, as for generate (a draft model and a batch size are not the server's: --slots is)
    p.add_class_arguments(RunOptions, None, as_group=True, skip={"batch_size", "draft", "draft_tokens", "ngram"})
    return p


def check(args: Any) -> None:
    if args.threads is not None and args.threads < 1:
        raise DataError("--threads must be >= 1")
    for name, lo in (("slots", 1), ("max_queue", 1), ("max_new_tokens_limit", 1), ("max_body_bytes", 1024), ("port", 0)):
        if getattr(args, name) < lo:
            raise DataError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    if args.timeout < 0 or args.grace < 0 or not 0 <= args.stream_interval <= 1000:
        raise DataError("--timeout and --grace must be >= 0, --stream-interval in 0..1000 (milliseconds)")


def build(args: Any) -> Any:
    """Start the engine process (its model loaded and compiled) and make the app."""
    from arseq.serve.app import create_app
    from arseq.serve.engine_process import EngineSpec
    from arseq.serve.settings import Settings

    loaded = checkpoint.load(args.checkpoint, args.modality, args.trust_modality_import)
    run = RunOptions(device=args.device, compile=args.compile, quantize=args.quantize, dtype=args.dtype)
    # This process plans requests and writes files: it needs the model's shape, never its weights.
    loaded.model.to("meta")
    spec = EngineSpec(
        checkpoint=str(args.checkpoint),
        modality=args.modality,
        trust_modality_import=args.trust_modality_import,
        run=run,
        threads=args.threads,
        log_level=args.log_level,
    )
    settings = Settings(
        name=args.name or loaded.modality.name,
        slots=args.slots,
        max_queue=args.max_queue,
        max_new_tokens_limit=args.max_new_tokens_limit,
        timeout=args.timeout or None,
        max_body_bytes=args.max_body_bytes,
        stream_interval=args.stream_interval / 1000,
    )
    return create_app(loaded, spec, settings)


def run_serve(argv: Sequence[str]) -> int:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise DataError(f"arseq serve needs the serve extra ({e.name} is missing): pip install 'arseq[serve]'") from None
    args = parse_verb(parser(), argv, [ServeOptions, RunOptions])
    check(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: anyone who can reach it can use this model (there is no authentication)", args.host)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.grace,
        limit_concurrency=max(256, 4 * args.max_queue),
    )
    server = quiet_exit(uvicorn.Server)(config)
    server.run()
    return 0


def quiet_exit(server_cls: type) -> type:
    """uvicorn's Server, whose SIGTERM/SIGINT start the graceful shutdown and then let the process exit 0 (uvicorn
    re-raises the signal after shutting down, which would end the process with it)."""

    class Server(server_cls):  # type: ignore[misc, valid-type]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server
