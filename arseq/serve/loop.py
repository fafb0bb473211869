"""The engine loop: one thread owns the model and the engine, admits requests' rows between steps, and hands
every token to asyncio as it is chosen.

Requests arrive (`submit`, `cancel`) through a locked inbox; the thread submits their rows, steps the engine
while any row is waiting or decoding, and sleeps on an event otherwise. The events of a turn (every row's
token, requests done or failed) go out in one hand-over (`outlet`): to the requests' asyncio queues when the
loop runs in the server's process, through a pipe when it runs in an engine process of its own
(arseq.serve.engine_process). Each hand-over to asyncio wakes the event loop (a write to its self-pipe), which,
made per token, took 14 % of the engine thread at 16 streams. Anything a
request's own code raises (its plan, its constraint, scoring or reading its samples) fails that request alone;
an exception in a step fails the requests that were decoding, and the loop goes on with a fresh engine.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from arseq.artifacts.checkpoint import Loaded
from arseq.decode import Row
from arseq.errors import DataError, one_line, option_names
from arseq.serve.jobs import JobPlan, samples_of
from arseq.serve.logprobs import scores_of
from arseq.serve.metrics import Metrics
from arseq.serve.schema import RequestError

log = logging.getLogger(__name__)


@dataclass
class Job:
    plan: JobPlan  # planned by the event loop's side (`jobs.plan_job`), so a refusal is answered before any stream
    events: asyncio.Queue | None  # ("token", sample, token) | ("done", samples, scores) | ("error", RequestError); None: see `key`
    deadline: float | None  # time.monotonic() (one clock for every process of a machine)
    key: int = 0  # the request's number between the server's process and an engine process
    submitted: float = field(default_factory=time.monotonic)
    ids: list[int] = field(default_factory=list)  # engine row ids, one per sample (guide rows are the engine's)
    results: dict[int, Any] = field(default_factory=dict)  # sample -> Finished
    first_token: float | None = None
    last_token: dict[int, float] = field(default_factory=dict)
    failed: RequestError | None = None
    cancelled: bool = False
    done: bool = False


Outlet = Callable[[list[tuple[Job, tuple]]], None]  # where a turn's events go, in order


class EngineLoop:
    """The thread that runs the engine. `make_engine()` builds a fresh engine (at start, and after a step failed);
    `metrics` takes what Metrics takes (arseq.serve.engine_process records it for the server's process)."""

    def __init__(
        self,
        loaded: Loaded,
        make_engine: Callable[[], Any],
        metrics: Metrics | Any,
        max_queue: int,
        stream_interval: float = 0.0,
        outlet: Outlet | None = None,
    ):
        self.loaded, self.make_engine, self.metrics, self.outlet = loaded, make_engine, metrics, outlet
        self.max_queue, self.stream_interval = max_queue, stream_interval
        self.flushed = 0.0  # when the last hand-over was
        self.urgent = False  # the outbox holds an event that goes out at once (a first token, an end)
        self.engine = make_engine()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.inbox: list[Job] = []
        self.cancels: list[tuple[Job, int | None]] = []  # (job, one sample or None: all)
        self.jobs: list[Job] = []  # planned, not done
        self.by_row: dict[int, tuple[Job, int]] = {}
        self.stopping = False
        self.stop_by = float("inf")  # while stopping: rows still decoding then are cancelled
        self.thread = threading.Thread(target=self._run, name="arseq-engine", daemon=True)
        self.outbox: list[tuple[Job, tuple]] = []  # this turn's events, handed over together (`_flush`)

    # ---- the event loop's side ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the thread; events go to the requests' queues on `loop` (or to the outlet given)."""
        if loop is not None:
            self.outlet = to_asyncio(loop)
        self.thread.start()

    def health(self) -> dict[str, Any]:
        return {"ok": self.thread.is_alive() and not self.stopping, "rows_active": self.engine.active, "requests_waiting": self.waiting()}

    def waiting(self) -> int:
        """Requests not yet decoding: in the inbox, or planned with no token chosen yet."""
        with self.lock:
            return len(self.inbox) + waiting_jobs(self.jobs)

    def submit(self, job: Job) -> None:
        """Queue a request; RequestError 429 past `max_queue` waiting ones, 503 while shutting down."""
        with self.lock:
            admit(None if not self.stopping else "shutting down", len(self.inbox) + waiting_jobs(self.jobs), self.max_queue, self.metrics)
            self.inbox.append(job)
        self.wake.set()

    def cancel(self, job: Job, sample: int | None = None) -> None:
        """The client went away: its rows leave at the next step. `sample`: that sample's row alone leaves (its
        text reached a stop string), its slot free for others; the request goes on and ends as it would."""
        with self.lock:
            job.cancelled |= sample is None
            self.cancels.append((job, sample))
        self.wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop admitting; finish the rows decoding (cancelled after `timeout` seconds); end the thread."""
        with self.lock:
            self.stop_by = time.monotonic() + timeout
            self.stopping = True
            pending, self.inbox = self.inbox, []
        for job in pending:
            self._emit(job, ("error", RequestError(503, "the server is shutting down", None)))
        self._flush()
        self.wake.set()
        self.thread.join(timeout + 5)

    # ---- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            try:
                if self._turn():
                    return
            except Exception:  # noqa: BLE001 - a bug of this loop's own: say so, keep serving
                log.exception("engine loop error")
                time.sleep(0.1)

    def _turn(self) -> bool:
        """Admit, cancel and expire requests, then one engine step (or a nap when idle); True when stopped."""
        self.wake.clear()
        with self.lock:
            new, self.inbox = self.inbox, []
            cancels, self.cancels = self.cancels, []
            stopping = self.stopping
        for job in new:
            self._admit(job)
        for job, sample in cancels:
            if sample is None:
                self._drop(job, None)
            elif job in self.jobs:
                self.engine.cancel(job.ids[sample])  # the row ends cancelled; the request ends with its others
        self._expire(stopping)
        if stopping and not self.jobs:
            self._flush()
            self._close_engine()
            return True
        if self.engine.waiting or self.engine.active:
            self._step()
        else:
            self.wake.wait(0.5)
        self.metrics.rows_active.set(self.engine.active)
        self.metrics.rows_waiting.set(self.engine.waiting)
        self.metrics.requests_waiting.set(self.waiting())
        self.metrics.requests_running.set(sum(1 for j in self.jobs if j.first_token is not None))
        if self.urgent or time.monotonic() - self.flushed >= self.stream_interval or not self.engine.active:
            self._flush()
        return False

    def _emit(self, job: Job, event: tuple, urgent: bool = True) -> None:
        with self.lock:
            self.outbox.append((job, event))
            self.urgent |= urgent

    def _flush(self) -> None:
        """Hand the events emitted since the last flush to the outlet, in order, in one hand-over.

        Tokens that are not a request's first wait up to `stream_interval` to go out with later ones: each
        hand-over wakes the event loop, which then writes every stream it touched, in Python: under the GIL the
        engine thread needs between its torch calls when both share a process, on the cores the engine needs
        when it has its own (see arseq.serve.engine_process)."""
        with self.lock:
            batch, self.outbox, self.urgent = self.outbox, [], False
        self.flushed = time.monotonic()
        if self.outlet is not None:  # also with no events: an engine process's outlet sends the metrics recorded
            self.outlet(batch)

    def _close_engine(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - a broken engine is being replaced anyway
                log.exception("closing the engine failed")

    def _admit(self, job: Job) -> None:
        if job.cancelled:
            return
        plan = job.plan
        if plan.parsed is not None and plan.parsed.score_only:  # nothing to sample: the prompts scored, at once
            self._answer(job, [([], False)] * len(plan.rows))
            return
        try:
            constraint = self._guarded(job, plan.constraint) if plan.constraint is not None else None
            for i, row in enumerate(plan.rows):
                rid = self.engine.submit(
                    Row(row.prompt, plan.cfg, seed=row.seed, constraint=constraint, guide=row.guide, head=plan.head, on_token=self._on_token(job, i))
                )
                job.ids.append(rid)
                self.by_row[rid] = (job, i)
            self.jobs.append(job)
        except Exception as e:  # noqa: BLE001 - the request's own failure: answer it, keep serving
            self._fail(job, e)

    def _guarded(self, job: Job, constraint: Callable) -> Callable:
        """The request's constraint; if it raises, the request fails and its rows may take any token until they leave."""

        def allowed(rows: list[list[int]]) -> torch.Tensor:
            try:
                return constraint(rows)
            except Exception as e:  # noqa: BLE001
                if job.failed is None:
                    job.failed = as_request_error(e)
                return torch.ones(len(rows), self.loaded.model.cfg.vocab_size, dtype=torch.bool)

        return allowed

    def _on_token(self, job: Job, sample: int) -> Callable[[int, bool], None]:
        stops = set(job.plan.cfg.stop_tokens)

        def on_token(token: int, done: bool) -> None:
            now = time.monotonic()
            if job.first_token is None:
                job.first_token = now
                self.metrics.ttft.observe(now - job.submitted)
            last = job.last_token.get(sample)
            if last is not None:
                self.metrics.itl.observe(now - last)
            job.last_token[sample] = now
            if done and token in stops:
                return
            self.metrics.tokens.inc()
            if not job.cancelled:
                self._emit(job, ("token", sample, token), urgent=last is None)

        return on_token

    def _step(self) -> None:
        try:
            finished = self.engine.step()
        except Exception as e:  # noqa: BLE001 - fail what was decoding, start again with a fresh engine
            log.exception("engine step failed")
            for job in list(self.jobs):
                self._drop(job, RequestError(500, f"decoding failed: {one_line(e)}", None))
            self.by_row.clear()
            self._close_engine()
            self.engine = self.make_engine()
            return
        for f in finished:
            owner = self.by_row.pop(f.id, None)
            if owner is None:
                continue
            job, sample = owner
            job.results[sample] = f
            if getattr(f, "error", None) and job.failed is None:
                job.failed = RequestError(500, f"decoding failed: {f.error}", None)
        for job in list(self.jobs):
            if job.failed is not None:
                self._drop(job, job.failed)
            elif len(job.results) == len(job.ids):
                self._complete(job)

    def _complete(self, job: Job) -> None:
        self.jobs.remove(job)
        self._answer(job, [(list(job.results[i].tokens), bool(job.results[i].stopped)) for i in range(len(job.ids))])

    def _answer(self, job: Job, results: list[tuple[list[int], bool]]) -> None:
        """A request's samples from its rows' (tokens, stopped), with their logprobs where it asked (the pass of
        arseq.serve.logprobs, here where the model is): ("done", samples, scores or None); its error if that fails."""
        if job.cancelled:
            job.done = True
            return
        try:
            samples = samples_of(self.loaded, job.plan, results)
            scores = scores_of(self.loaded, job.plan, results)
        except Exception as e:  # noqa: BLE001 - the request's own failure (not done yet: _fail answers it)
            self._fail(job, e)
            return
        job.done = True
        self.metrics.latency.observe(time.monotonic() - job.submitted)
        self._emit(job, ("done", samples, scores))

    def _drop(self, job: Job, error: RequestError | None) -> None:
        """Cancel a job's rows (they leave at the next step); answer it with `error` unless the client is gone."""
        for rid in job.ids:
            self.engine.cancel(rid)
            self.by_row.pop(rid, None)
        if job in self.jobs:
            self.jobs.remove(job)
        if not job.done:
            job.done = True
            if error is not None:
                self._emit(job, ("error", error))
            elif job.cancelled:
                self.metrics.cancelled.labels("disconnect").inc()

    def _expire(self, stopping: bool) -> None:
        now = time.monotonic()
        for job in list(self.jobs):
            if job.deadline is not None and now > job.deadline:
                self.metrics.cancelled.labels("timeout").inc()
                self._drop(
                    job, RequestError(504, f"timeout: the request ran longer than the server's --timeout of {job.deadline - job.submitted:g} s", None)
                )
            elif stopping and now > self.stop_by:
                self._drop(job, RequestError(503, "the server is shutting down", None))

    def _fail(self, job: Job, e: Exception) -> None:
        error = as_request_error(e)
        if error.status >= 500:
            log.error("request failed: %s", one_line(e), exc_info=e)
        self._drop(job, error)


def waiting_jobs(jobs: Iterable[Job]) -> int:
    """Jobs with no token chosen yet."""
    return sum(1 for j in jobs if j.first_token is None)


def admit(closed: str | None, waiting: int, max_queue: int, metrics: Any) -> None:
    """Whether a server takes one more request: RequestError 503 while `closed` (why), 429 with Retry-After
    past `max_queue` requests `waiting`."""
    if closed is not None:
        raise RequestError(503, f"the server is {closed}", None, {"Retry-After": "5"})
    if waiting >= max_queue:
        metrics.rejected.labels("queue_full").inc()
        raise RequestError(429, f"the queue is full ({waiting} requests waiting); retry later", None, {"Retry-After": "1"})


def to_asyncio(loop: asyncio.AbstractEventLoop) -> Outlet:
    """An outlet that puts each event on its request's queue, on `loop`'s thread (one wake-up per hand-over)."""

    def deliver(batch: list[tuple[Job, tuple]]) -> None:
        for job, event in batch:
            assert job.events is not None
            job.events.put_nowait(event)

    def outlet(batch: list[tuple[Job, tuple]]) -> None:
        if not batch:
            return
        try:
            loop.call_soon_threadsafe(deliver, batch)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    return outlet


def as_request_error(e: Exception) -> RequestError:
    """A modality's refusal (DataError, ValueError from checks) is the client's 422; anything else the server's 500."""
    if isinstance(e, RequestError):
        return e
    if isinstance(e, (DataError, ValueError)):
        return RequestError(422, option_names(one_line(e)), None)  # its flags as the request's fields
    return RequestError(500, f"internal error: {type(e).__name__}: {one_line(e)}", None)
