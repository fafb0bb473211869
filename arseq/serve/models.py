"""The models one server serves, by name (`arseq serve --checkpoint bach=runs/music --checkpoint digits=runs/image`).

Each model has its own engine (under `arseq serve`, an engine process each) with the same settings, its own
schema, and its figures in the server's one metrics registry under its `model` label. A request names its model
as OpenAI's requests do, by `model`: in the body of `/v1/completions` and `/v1/generate`, in the query of
`/v1/model`. With one model the name is not checked, as before a server could serve several: OpenAI clients
send whatever model name they were set up with.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Mapping

from arseq.artifacts.checkpoint import Loaded
from arseq.errors import DataError
from arseq.serve.engine_process import EngineProcess, EngineSpec
from arseq.serve.loop import EngineLoop
from arseq.serve.metrics import Metrics
from arseq.serve.schema import RequestError, Schema
from arseq.serve.settings import Settings

Engine = Callable[[], Any] | EngineSpec  # a function that makes an Engine (a thread here), or an engine process's spec


class Model:
    """One served model: its checkpoint, schema and engine loop. `settings.name` is its name; `metrics` is the
    server's (the HTTP side counts requests there), the engine loop gets the model's labelled view of it."""

    def __init__(self, loaded: Loaded, engine: Engine, settings: Settings, metrics: Metrics, writer: ThreadPoolExecutor):
        self.loaded, self.settings, self.metrics, self.writer = loaded, settings, metrics, writer
        self.schema = Schema(loaded, settings.max_new_tokens_limit)
        self.loop: EngineLoop | EngineProcess
        if isinstance(engine, EngineSpec):
            self.loop = EngineProcess(engine, settings, metrics.of(settings.name))
        else:
            self.loop = EngineLoop(loaded, engine, metrics.of(settings.name), settings.max_queue, settings.stream_interval)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return self.schema.describe(s.name, {"slots": s.slots, "max_queue": s.max_queue, "timeout_s": s.timeout, "max_body_bytes": s.max_body_bytes})


class Models:
    """The server's models by name (in the order given), their shared metrics registry, and the one thread that
    writes files (music21 and pillow, one request at a time, whichever model it is for). The engines start here,
    all at once (each engine process loads and compiles its model while the others do: the server is up in the
    slowest one's time, not their sum); if one cannot, the others are stopped and the error names the model."""

    def __init__(self, engines: Mapping[str, tuple[Loaded, Engine]], settings: Settings):
        if not engines:
            raise ValueError("no model to serve")
        self.settings, self.metrics = settings, Metrics()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="arseq-write")
        with ThreadPoolExecutor(len(engines), thread_name_prefix="arseq-start") as pool:
            starts = {
                name: pool.submit(Model, loaded, engine, replace(settings, name=name), self.metrics, self.writer)
                for name, (loaded, engine) in engines.items()
            }
        self.by_name = {name: start.result() for name, start in starts.items() if start.exception() is None}
        failed = next(((name, e) for name, start in starts.items() if (e := start.exception()) is not None), None)
        if failed is not None:
            self._stop_processes()
            name, e = failed
            if isinstance(e, DataError) and len(engines) > 1:
                raise DataError(f"model {name!r}: {e}") from None
            raise e

    def _stop_processes(self) -> None:
        """Stop the engine processes started (a failed start leaves no orphan; an EngineLoop's thread is not started)."""
        for model in self.by_name.values():
            if isinstance(model.loop, EngineProcess):
                model.loop.stop(0)

    def pick(self, name: Any) -> Model:
        """The model a request names: with several models, RequestError 400 without a name, 404 for an unknown one
        (OpenAI's status for a model that does not exist); with one, that model whatever the name."""
        if len(self.by_name) == 1:
            return next(iter(self.by_name.values()))
        known = ", ".join(self.by_name)
        if name is None:
            raise RequestError(400, f"model: required (this server serves several models: {known})", "model")
        if not isinstance(name, str):
            raise RequestError(400, f"model: expected a string, got {name!r}", "model")
        if name not in self.by_name:
            raise RequestError(404, f"model: no model {name[:64]!r} here; known: {known}", "model")
        return self.by_name[name]

    def route(self, body: Any) -> tuple[Model, dict[str, Any]]:
        """The model a POST body names, and the body without `model` (the model's schema checks the rest)."""
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object", None)
        rest = dict(body)
        return self.pick(rest.pop("model", None)), rest

    def listing(self) -> dict[str, Any]:
        """`GET /v1/models`: OpenAI's list."""
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "arseq"} for name in self.by_name]}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether every model's engine runs, and the body of `GET /health`: the totals, and each model's."""
        states = {name: model.loop.health() for name, model in self.by_name.items()}
        oks = {name: state.pop("ok") for name, state in states.items()}
        body = {
            "status": "ok" if all(oks.values()) else "unavailable",
            "rows_active": sum(s["rows_active"] for s in states.values()),
            "requests_waiting": sum(s["requests_waiting"] for s in states.values()),
            "models": {name: {"status": "ok" if oks[name] else "unavailable", **s} for name, s in states.items()},
        }
        return all(oks.values()), body

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for model in self.by_name.values():
            model.loop.start(loop)

    def stop(self, timeout: float) -> None:
        """Stop every engine at once (each lets its rows finish for `timeout` seconds), then the file writer."""
        with ThreadPoolExecutor(len(self.by_name), thread_name_prefix="arseq-stop") as pool:
            list(pool.map(lambda model: model.loop.stop(timeout), self.by_name.values()))
        self.writer.shutdown(wait=True)
