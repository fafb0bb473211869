"""The HTTP side: a Starlette app over the engine loops of one or several models (arseq.serve.models).

`POST /v1/completions` (OpenAI's shape, SSE with `data: [DONE]`), `POST /v1/generate` (arseq's: options and
conditions in, the modality's files out as base64, progress as SSE), `GET /v1/model`, `GET /v1/models`,
`GET /health`, `GET /metrics` and the web page at `/`. Errors are one-line JSON naming the field at fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from arseq.artifacts.checkpoint import Loaded
from arseq.errors import one_line
from arseq.serve.jobs import JobPlan, plan_job, prompt_text, text_of, write_files
from arseq.serve.logprobs import Scores, choice_logprobs
from arseq.serve.loop import Job, as_request_error
from arseq.serve.models import Engine, Model, Models
from arseq.serve.request_body import Parsed, parse
from arseq.serve.schema import RequestError
from arseq.serve.settings import Settings
from arseq.serve.stops import SampleText
from arseq.serve.uploads import take_upload

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 1.0  # an idle stream sends an SSE comment this often (and so notices a client that left)


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def read_json(request: HttpRequest, limit: int) -> Any:
    """The body as JSON: 413 past `limit` bytes, 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {declared} bytes; the limit is {limit}", None)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the request body is over the limit of {limit} bytes", None)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON: {one_line(e)}", None) from None


def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


class Run:
    """One request in flight: its queue of engine events, its texts so far (up to their stop strings, if any),
    and the way out if the client leaves."""

    def __init__(self, server: Model, plan: JobPlan, http: HttpRequest, stops: list[str]):
        self.server, self.plan, self.http = server, plan, http
        self.queue: asyncio.Queue = asyncio.Queue()
        timeout = server.settings.timeout
        self.job = Job(plan, self.queue, time.monotonic() + timeout if timeout else None)
        self.texts = [SampleText(server.loaded, stops) for _ in plan.rows]
        self.finished = False
        self.scores: list[Scores] | None = None  # each sample's logprobs, where asked (arseq.serve.logprobs)
        self.id = f"cmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        server.loop.submit(self.job)

    async def events(self) -> AsyncIterator[tuple]:
        """Engine events until the request ends: ("tokens", sample, [token, ...]), ("done", samples, scores),
        ("error", RequestError), and ("idle",) while nothing happens. Tokens of a sample that queued up while the
        stream was being written come as one event, so a stream that falls behind catches up in fewer, larger
        writes instead of falling further behind. A client that left (checked every KEEPALIVE_S seconds) ends
        the request, and its rows leave the engine at the next step; so does the row of a sample whose text
        reached a stop string, and its tokens after that one are dropped here."""
        checked = time.monotonic()
        try:
            while True:
                try:
                    batch = [await asyncio.wait_for(self.queue.get(), KEEPALIVE_S)]
                    while not self.queue.empty():
                        batch.append(self.queue.get_nowait())
                except asyncio.TimeoutError:
                    batch = [("idle",)]
                if time.monotonic() - checked >= KEEPALIVE_S:
                    checked = time.monotonic()
                    if await self.http.is_disconnected():
                        return
                for event in merged(batch):
                    if event[0] == "tokens":
                        event = ("tokens", event[1], self.texts[event[1]].add(event[2]))
                        if not event[2]:  # the sample had stopped already
                            continue
                        if self.texts[event[1]].stopped:  # these tokens reached a stop string
                            self.server.loop.cancel(self.job, event[1])
                    elif event[0] in ("done", "error"):
                        self.finished = True
                        self.scores = event[2] if event[0] == "done" else None
                    yield event
                    if self.finished:
                        return
        finally:
            self.close()

    def close(self) -> None:
        """Cancel the request unless it ended (also run after a stream whose client left before it began)."""
        if not self.finished:
            self.finished = True
            self.server.loop.cancel(self.job)

    def delta(self, sample: int, end: bool = False) -> str:
        """New text of a sample since the last call (nothing while a multi-byte character is incomplete, or
        while it may begin a stop string); `end`: the sample is over."""
        return self.texts[sample].take(end)

    def finish_reason(self, sample: int, result: Any) -> str:
        return "stop" if result.stopped or self.texts[sample].stopped else "length"

    def logprobs(self, sample: int, echo: bool) -> dict[str, Any] | None:
        """A choice's `logprobs` (its kept tokens': up to a stop string), once the request is done; None unless asked."""
        if self.scores is None:
            return None
        return choice_logprobs(self.server.loaded, self.plan.rows[sample].prompt, self.texts[sample].tokens, self.scores[sample], echo)


def merged(events: list[tuple]) -> list[tuple]:
    """Engine events with each run of ("token", sample, t) of one sample as one ("tokens", sample, [t, ...])."""
    out: list[tuple] = []
    for event in events:
        if event[0] != "token":
            out.append(event)
        elif out and out[-1][0] == "tokens" and out[-1][1] == event[1]:
            out[-1][2].append(event[2])
        else:
            out.append(("tokens", event[1], [event[2]]))
    return out


async def _start(http: HttpRequest, openai: bool) -> tuple[Run, Parsed]:
    served: Models = http.app.state.models
    server, body = served.route(await read_json(http, served.settings.max_body_bytes))
    body, upload = take_upload(server.schema, body) if not openai else (body, None)
    parsed = replace(parse(server.schema, body, openai), prompt_file=upload)
    loop = asyncio.get_running_loop()
    try:
        plan = await loop.run_in_executor(None, plan_job, server.loaded, parsed, server.settings.max_new_tokens_limit, not openai)
    except Exception as e:  # noqa: BLE001 - the modality refused the options: 422 naming them; else 500
        raise as_request_error(e) from None
    return Run(server, plan, http, parsed.stop), parsed


def _usage(run: Run) -> dict[str, int]:
    prompt = sum(len(r.prompt) for r in run.plan.rows)
    done = sum(len(t.tokens) for t in run.texts)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


async def completions(http: HttpRequest) -> Response:
    run, parsed = await _start(http, openai=True)
    if parsed.stream:
        return StreamingResponse(
            _completion_stream(run, parsed.echo),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
            background=BackgroundTask(run.close),
        )
    samples = await _result(run)
    choices = [
        {
            "index": i,
            "text": (prompt_text(run.server.loaded, run.plan, i) if parsed.echo else "") + run.texts[i].whole(),
            "token_ids": run.texts[i].tokens,
            "logprobs": run.logprobs(i, parsed.echo),
            "finish_reason": run.finish_reason(i, s),
        }
        for i, s in enumerate(samples)
    ]
    run.server.metrics.requests.labels("completions", "200").inc()
    body = {"id": run.id, "object": "text_completion", "created": run.created, "model": run.server.settings.name, "choices": choices}
    return JSONResponse({**body, "usage": _usage(run), "seed": run.plan.seed})


async def _completion_stream(run: Run, echo: bool) -> AsyncIterator[str]:
    """A completion's SSE: (with `echo`, each choice's prompt text first) its text as it comes, an error, or each
    choice's end with its finish reason; then [DONE]."""
    server = run.server

    def chunk(sample: int, text: str, tokens: list[int], finish: str | None) -> dict[str, Any]:
        choice = {"index": sample, "text": text, "token_ids": tokens, "logprobs": None, "finish_reason": finish}
        return {"id": run.id, "object": "text_completion", "created": run.created, "model": server.settings.name, "choices": [choice]}

    for i in range(len(run.plan.rows)) if echo else ():
        yield sse(chunk(i, prompt_text(server.loaded, run.plan, i), [], None))
    async for event in run.events():
        if event[0] == "idle":
            yield ": keepalive\n\n"
        elif event[0] == "tokens":
            yield sse(chunk(event[1], run.delta(event[1]), event[2], None))
        elif event[0] == "error":
            yield sse(event[1].body())
        else:
            for i, s in enumerate(event[1]):
                yield sse(chunk(i, run.delta(i, end=True), [], run.finish_reason(i, s)))
    yield sse("[DONE]")
    server.metrics.requests.labels("completions", "200").inc()


async def _result(run: Run) -> list[Any]:
    async for event in run.events():
        if event[0] == "error":
            raise event[1]
        if event[0] == "done":
            return event[1]
    raise RequestError(499, "the client closed the connection", None)


async def _generated(run: Run, samples: list[Any]) -> dict[str, Any]:
    server = run.server
    loop = asyncio.get_running_loop()
    try:
        files = await loop.run_in_executor(server.writer, write_files, server.loaded, run.plan, samples)
    except Exception as e:  # noqa: BLE001
        log.error("writing files failed: %s", one_line(e), exc_info=e)
        raise as_request_error(e) from None
    text = server.schema.text_samples
    return {
        "id": run.id.replace("cmpl-", "gen-"),
        "object": "generation",
        "created": run.created,
        "model": server.settings.name,
        "modality": server.loaded.modality.name,
        "seed": run.plan.seed,
        "sampling": run.plan.sampling,
        "samples": [
            {
                "index": i,
                "prompt_tokens": s.prompt,
                "tokens": s.tokens,
                "stopped": s.stopped,
                "perplexity": s.perplexity,
                **({"text": text_of(server.loaded, s.tokens)} if text else {}),
            }
            for i, s in enumerate(samples)
        ],
        "files": files,
        "usage": _usage(run),
    }


async def generate(http: HttpRequest) -> Response:
    run, parsed = await _start(http, openai=False)
    server = run.server
    if not parsed.stream:
        body = await _generated(run, await _result(run))
        server.metrics.requests.labels("generate", "200").inc()
        return JSONResponse(body)
    text = server.schema.text_samples

    async def stream() -> AsyncIterator[str]:
        yield sse({"samples": len(run.plan.rows), "max_new_tokens": run.plan.cfg.max_new_tokens, "seed": run.plan.seed}, "start")
        async for event in run.events():
            if event[0] == "idle":
                yield ": keepalive\n\n"
            elif event[0] == "tokens":  # an event a token (the page counts them); the new text with the last
                *before, last = event[2]
                for t in before:
                    yield sse({"sample": event[1], "token": t, **({"text": ""} if text else {})}, "token")
                yield sse({"sample": event[1], "token": last, **({"text": run.delta(event[1])} if text else {})}, "token")
            elif event[0] == "error":
                yield sse(event[1].body(), "error")
            else:
                yield sse({"samples": len(event[1])}, "writing")
                try:
                    yield sse(await _generated(run, event[1]), "result")
                except RequestError as e:
                    yield sse(e.body(), "error")
        yield sse("[DONE]")
        server.metrics.requests.labels("generate", "200").inc()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}, background=BackgroundTask(run.close))


async def model_info(http: HttpRequest) -> Response:
    return JSONResponse(http.app.state.models.pick(http.query_params.get("model")).describe())


async def models(http: HttpRequest) -> Response:
    return JSONResponse(http.app.state.models.listing())


async def health(http: HttpRequest) -> Response:
    ok, body = http.app.state.models.health()
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics(http: HttpRequest) -> Response:
    return Response(http.app.state.models.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def index(http: HttpRequest) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _endpoint(http: HttpRequest) -> str:
    return http.url.path.rsplit("/", 1)[-1] or "index"


async def refused(http: HttpRequest, e: Exception) -> Response:
    assert isinstance(e, RequestError)
    http.app.state.models.metrics.requests.labels(_endpoint(http), str(e.status)).inc()
    return error_response(e)


async def crashed(http: HttpRequest, e: Exception) -> Response:
    """Anything unexpected: 500 with one line; the server goes on."""
    log.error("request failed: %s", one_line(e), exc_info=e)
    http.app.state.models.metrics.requests.labels(_endpoint(http), "500").inc()
    return error_response(RequestError(500, f"internal error: {type(e).__name__}: {one_line(e)}", None))


def create_app(loaded: Loaded, engine: Engine, settings: Settings | None = None) -> Any:
    """The ASGI app of one model, named `settings.name`, over an engine loop in this process (`engine`: a function
    that makes an Engine) or in a process of its own (an EngineSpec; `arseq serve`)."""
    settings = settings or Settings()
    return create_models_app({settings.name: (loaded, engine)}, settings)


def create_models_app(engines: Mapping[str, tuple[Loaded, Engine]], settings: Settings | None = None) -> Any:
    """The ASGI app of several models by name (each `(loaded, engine)` as for `create_app`), each engine with
    `settings`; the engines are started and stopped by the app's lifespan."""
    served = Models(engines, settings or Settings())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        served.start(asyncio.get_running_loop())
        yield
        await asyncio.get_running_loop().run_in_executor(None, served.stop, 5.0)

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/model", model_info),
        Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/generate", generate, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={RequestError: refused, Exception: crashed})
    app.state.models = served
    return app
