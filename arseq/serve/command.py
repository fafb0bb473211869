"""`arseq serve --checkpoint RUN_OR_CKPT_OR_EXPORT`: the HTTP server (uvicorn), until SIGTERM or SIGINT.

Several models: `--checkpoint NAME=PATH`, repeated (each its own engine process, with the same settings; a
request names its model by `model`, see arseq.serve.models).

On a signal uvicorn stops accepting connections and lets running requests finish for `--grace` seconds,
after which they are cancelled; then the engine loop stops and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from jsonargparse import ArgumentParser

from arseq.app.options import parse_verb, verb_parser
from arseq.app.run_options import RunOptions
from arseq.artifacts import checkpoint
from arseq.errors import DataError

log = logging.getLogger("arseq.serve")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a model's name: safe in a URL's query, a metric's label, a log line
NAME_RULE = "1 to 64 of A-Z a-z 0-9 _ . -"


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
        threads: torch threads for each model on a CPU (default: the usable cores but one, shared among the models, at least one each; the HTTP side needs the other)
        stream_interval: milliseconds a stream's tokens may wait to go out together (a request's first token and its end go at once); 0: every token as it comes
        name: the model's name in responses (default: the checkpoint's modality); several models are named by --checkpoint NAME=PATH
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
        "an HTTP server with continuous batching: OpenAI completions, arseq's /v1/generate (the modality's files), metrics and a web page at /. "
        "Several models: --checkpoint NAME=PATH, repeated (requests name theirs by `model`)",
        several=True,
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
    if args.port > 65535:
        raise DataError(f"--port must be in 0..65535, got {args.port}")
    if args.timeout < 0 or args.grace < 0 or not 0 <= args.stream_interval <= 1000:
        raise DataError("--timeout and --grace must be >= 0, --stream-interval in 0..1000 (milliseconds)")


def checkpoint_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every value of --checkpoint, and argv with one of them: the verb parser's --checkpoint takes one value (given
    twice, the last would win silently)."""
    values: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg.startswith("--checkpoint="):
            values.append(arg.partition("=")[2])
        elif arg == "--checkpoint" and (value := next(args, None)) is not None:
            values.append(value)
        else:
            rest.append(arg)  # a bare --checkpoint at the end stays: the parser says what it lacks
    return values, rest + (["--checkpoint", values[0]] if values else [])


def named(checkpoints: Sequence[str], name: str | None) -> list[tuple[str | None, str]]:
    """(name, path) of each --checkpoint: NAME=PATH, or a PATH alone (a path that exists is one, '=' and all), whose
    name is --name or its modality's (one checkpoint only). DataError for a bad or repeated name, or a PATH
    without a name beside others."""
    out: list[tuple[str | None, str]] = []
    for value in checkpoints:
        key, eq, path = value.partition("=")
        if not eq or Path(value).exists():
            out.append((None, value))
        elif not NAME.fullmatch(key) or not path:
            raise DataError(f"--checkpoint {value}: not a file or folder, nor NAME=PATH with a NAME of {NAME_RULE}")
        else:
            out.append((key, path))
    names = [n for n, _ in out if n is not None]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"--checkpoint: the name {repeated[0]!r} is given twice; each model needs a name of its own")
    unnamed = [path for n, path in out if n is None]
    if len(out) > 1 and unnamed:
        raise DataError(f"--checkpoint {unnamed[0]}: several checkpoints need a name each (--checkpoint NAME=PATH)")
    if name is not None and names:
        raise DataError("--name names the model of a single --checkpoint PATH; give --checkpoint NAME=PATH instead")
    return out


def build(args: Any, checkpoints: list[tuple[str | None, str]]) -> Any:
    """Load every checkpoint (a PATH that does not load fails before any engine starts), start each model's engine
    process (its model loaded and compiled) and make the app."""
    from arseq.serve.app import create_models_app
    from arseq.serve.engine_process import EngineSpec, default_threads
    from arseq.serve.settings import Settings

    run = RunOptions(device=args.device, compile=args.compile, quantize=args.quantize, dtype=args.dtype)
    threads = args.threads or default_threads(len(checkpoints))
    engines: dict[str, tuple[Any, EngineSpec]] = {}
    for name, path in checkpoints:
        loaded = checkpoint.load(path, args.modality, args.trust_modality_import)
        # This process plans requests and writes files: it needs the model's shape, never its weights.
        loaded.model.to("meta")
        spec = EngineSpec(path, args.modality, args.trust_modality_import, run, threads, args.log_level)
        engines[name or args.name or loaded.modality.name] = (loaded, spec)
    settings = Settings(
        name=next(iter(engines)),
        slots=args.slots,
        max_queue=args.max_queue,
        max_new_tokens_limit=args.max_new_tokens_limit,
        timeout=args.timeout or None,
        max_body_bytes=args.max_body_bytes,
        stream_interval=args.stream_interval / 1000,
    )
    return create_models_app(engines, settings)


def parse_serve(argv: Sequence[str]) -> tuple[Any, list[tuple[str | None, str]]]:
    """The options, checked, and the models' (name, path): from the --checkpoint flags, else from --config (one
    checkpoint, or a list of NAME=PATH)."""
    checkpoints, argv = checkpoint_flags(argv)
    args = parse_verb(parser(), argv, [ServeOptions, RunOptions])
    check(args)
    if not checkpoints:
        checkpoints = [args.checkpoint] if isinstance(args.checkpoint, str) else args.checkpoint
    return args, named(checkpoints, args.name)


def run_serve(argv: Sequence[str]) -> int:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise DataError(f"arseq serve needs the serve extra ({e.name} is missing): pip install 'arseq[serve]'") from None
    args, models = parse_serve(argv)
    with contextlib.closing(listening(args.host, args.port)) as sock, server_logging(args.log_level):
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("binding %s: anyone who can reach it can use this model (there is no authentication)", args.host)
        app = build(args, models)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            host=args.host,
            port=port,
            log_level=args.log_level,
            timeout_graceful_shutdown=args.grace,
            limit_concurrency=max(256, 4 * args.max_queue),
        )
        url = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{port}/"
        arseq_server(uvicorn.Server, url)(config).run(sockets=[sock])
    return 0


def listening(host: str, port: int) -> socket.socket:
    """The server's socket, bound before any model loads: a port in use or an address that is not this machine's
    is one line and exit 2 at once (uvicorn binds after the engines started, and says it among its own lines)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise DataError(f"--host {host}: not an address to listen on ({e.strerror or e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait out TIME_WAIT
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise DataError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


@contextlib.contextmanager
def server_logging(level: str) -> Iterator[None]:
    """While the server runs, its lines carry the time, each once: the root logger gets the format, and arseq's own
    stderr handler (the CLI's, without time) takes it too and stops passing its records up to the root's."""
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt)
    arseq_log = logging.getLogger("arseq")
    saved = arseq_log.level, arseq_log.propagate, [(h, h.formatter) for h in arseq_log.handlers]
    arseq_log.setLevel(level.upper())
    for handler in arseq_log.handlers:
        handler.setFormatter(logging.Formatter(fmt))
    arseq_log.propagate = not arseq_log.handlers
    try:
        yield
    finally:
        arseq_log.setLevel(saved[0])  # setLevel, not .level: loggers cache what their level lets through
        arseq_log.propagate = saved[1]
        for handler, formatter in saved[2]:
            handler.setFormatter(formatter)


def arseq_server(server_cls: type, url: str) -> type:
    """uvicorn's Server, which says where it listens once it does (uvicorn says nothing of sockets it is given), and
    whose SIGTERM/SIGINT start the graceful shutdown and then let the process exit 0 (uvicorn re-raises the signal
    after shutting down, which would end the process with it)."""

    class Server(server_cls):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            log.info("serving on %s (Ctrl+C to stop)", url)

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
