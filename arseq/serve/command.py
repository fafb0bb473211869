"""`arseq serve --checkpoint RUN_OR_CKPT_OR_EXPORT`: the HTTP server (uvicorn), until SIGTERM or SIGINT.

On a signal uvicorn stops accepting connections and lets running requests finish for `--grace` seconds,
after which they are cancelled; then the engine loop stops and the process exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from typing import Any, Iterator, Sequence

from arseq.errors import DataError
from arseq.app import generation
from arseq.artifacts import checkpoint
from arseq.decode import Engine

log = logging.getLogger("arseq.serve")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arseq serve", description="an HTTP server with continuous batching: OpenAI "
                                "completions, arseq's /v1/generate (the modality's files), metrics and a web page at /")
    p.add_argument("--checkpoint", required=True, help="a .ckpt, a run folder of 'arseq train', or an export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--slots", type=int, default=8, help="rows decoding at once (one per sample; guided samples take two)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting past this get 429 with Retry-After")
    p.add_argument("--max-new-tokens-limit", type=int, default=4096, help="most tokens one sample may ask for")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take, queue included (0: none)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body accepted (413 past it)")
    p.add_argument("--grace", type=float, default=30.0, help="on SIGTERM/SIGINT: seconds running requests get to finish")
    p.add_argument("--name", default=None, help="the model's name in responses (default: the checkpoint's modality)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--compile", default="off", choices=("off", "on", "auto"), help="torch.compile the decode step")
    p.add_argument("--quantize", default="none", choices=("none", "int8"), help="int8 weights, per-channel scales")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--modality", default=None, metavar="NAME_OR_IMPORT_PATH",
                   help="use this modality instead of the one the file names")
    p.add_argument("--trust-modality-import", action="store_true",
                   help="allow the import path of a modality stored in the file (imports that module: trust the file first)")
    return p


def check(args: argparse.Namespace) -> None:
    for name, lo in (("slots", 1), ("max_queue", 1), ("max_new_tokens_limit", 1), ("max_body_bytes", 1024), ("port", 0)):
        if getattr(args, name) < lo:
            raise DataError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    if args.timeout < 0 or args.grace < 0:
        raise DataError("--timeout and --grace must be >= 0")


def build(args: argparse.Namespace) -> Any:
    """Load the model and make the app (the engine is built when the app starts)."""
    from arseq.serve.app import Settings, create_app

    loaded = checkpoint.load(args.checkpoint, args.modality, args.trust_modality_import)
    generation.prepare_model(loaded, generation.RunOptions(device=args.device, compile=args.compile, quantize=args.quantize,
                                                           dtype=args.dtype))

    def make_engine() -> Any:
        return Engine(loaded.model, slots=args.slots, compile=args.compile, pad_id=loaded.tokenizer.pad_id)

    settings = Settings(name=args.name or loaded.modality.name, slots=args.slots, max_queue=args.max_queue,
                        max_new_tokens_limit=args.max_new_tokens_limit, timeout=args.timeout or None,
                        max_body_bytes=args.max_body_bytes)
    return create_app(loaded, make_engine, settings)


def run_serve(argv: Sequence[str]) -> int:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise DataError(f"arseq serve needs the serve extra ({e.name} is missing): pip install 'arseq[serve]'") from None
    args = parser().parse_args(list(argv))
    check(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: anyone who can reach it can use this model (there is no authentication)", args.host)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=args.grace,
                            limit_concurrency=max(256, 4 * args.max_queue))
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
