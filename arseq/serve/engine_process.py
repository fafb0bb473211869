"""The engine in a process of its own, as `arseq serve` runs it (vLLM's V1 engine core does the same).

Why: in one process the engine's thread and the event loop share the GIL. Every torch call of a step gives it
up and must wait to take it back while the event loop writes streams, so the two ran one after the other: at
16 streams the whole server used one core of two (7.1 s of CPU in 7.1 s of wall time, 4,550 tokens/s, against
~6,900 the engine decodes alone). Here the engine loop runs in a child process (spawned: a fork of a process
whose OpenMP threads have run can hang) and the server's process talks to it through a pipe: requests in, as
the checked request with its seed (the child plans it again, so the constraint, a closure, never crosses); a
turn's events out in one message with the metrics the loop recorded, which the server's process replays onto
its own registry (one /metrics). If the child dies, its requests fail with a 500 and a new one is started.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from arseq.app import generation
from arseq.app.run_options import RunOptions
from arseq.artifacts import checkpoint
from arseq.artifacts.checkpoint import Loaded
from arseq.decode import Engine
from arseq.errors import DataError, one_line
from arseq.parallel import usable_cores
from arseq.serve.jobs import plan_job
from arseq.serve.loop import EngineLoop, Job, admit, as_request_error, waiting_jobs
from arseq.serve.metrics import Metrics
from arseq.serve.schema import RequestError
from arseq.serve.settings import Settings

log = logging.getLogger(__name__)
# The engine thread shares its process's GIL with the thread reading the pipe (which plans requests). A torch op
# gives the GIL up and takes it back, and taking it back from a busy thread waits out Python's switch interval
# (5 ms by default): while another thread ran Python, a compiled 16-row step that runs in 1 ms took ~80 ms (a
# spinning thread beside it, 1 torch thread: 12 steps/s; 460 with 1 ms). The engine's steps are the critical path.
SWITCH_INTERVAL_S = 0.0002
RECORDED = {"ttft", "itl", "latency", "tokens", "cancelled", "rejected", "rows_active", "rows_waiting", "requests_waiting", "requests_running"}


@dataclass(frozen=True)
class EngineSpec:
    """What the engine process builds its model and engine from (it crosses to the child, so plain values)."""

    checkpoint: str
    modality: str | None
    trust_modality_import: bool
    run: RunOptions
    threads: int | None  # torch threads on a CPU (None: the usable cores but one; the server's process needs one)
    log_level: str = "info"


def build_engine(loaded: Loaded, slots: int, compile: Any) -> Engine:
    engine = Engine(loaded.model, slots=slots, compile=compile, pad_id=loaded.tokenizer.pad_id)
    engine.warm()  # --compile: every graph before the first request, not during it
    return engine


# ---- the child ---------------------------------------------------------------------------------------------
class Records:
    """Metrics as EngineLoop writes them (Metrics' names and calls), kept until the next hand-over: gauges' last
    values, counters' sums, histograms' observations."""

    def __init__(self) -> None:
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.counts: defaultdict[tuple[str, tuple], float] = defaultdict(float)
        self.observed: defaultdict[str, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> _Recorded:
        if name not in RECORDED:  # a metric the server's process would refuse to replay, or a probe (copy, pickle)
            raise AttributeError(name)
        return _Recorded(self, name, ())

    def take(self) -> tuple[dict, dict, dict] | None:
        """What was recorded since the last call (None: nothing)."""
        if not (self.gauges or self.counts or self.observed):
            return None
        out = (self.gauges, dict(self.counts), dict(self.observed))
        self.gauges, self.counts, self.observed = {}, defaultdict(float), defaultdict(list)
        return out


@dataclass
class _Recorded:
    records: Records
    name: str
    values: tuple

    def labels(self, *values: str) -> _Recorded:
        return _Recorded(self.records, self.name, values)

    def inc(self, amount: float = 1) -> None:
        self.records.counts[(self.name, self.values)] += amount

    def observe(self, value: float) -> None:
        self.records.observed[self.name].append(value)

    def set(self, value: float) -> None:
        self.records.gauges[(self.name, self.values)] = value


def engine_main(conn: Connection, spec: EngineSpec, settings: Settings) -> None:
    """The engine process: load and prepare the model, build the engine loop, say "ready" (or "failed" and why),
    then take requests from the pipe until told to stop or the server's process goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server's process decides
    logging.basicConfig(level=spec.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_grad_enabled(False)
    side = _EngineSide(conn, settings)
    try:
        side.start(spec)
    except Exception as e:  # noqa: BLE001 - the server's process says it in one line and exits 2
        side.send(("failed", one_line(e)))
        return
    side.send(("ready",))
    side.serve()


class _EngineSide:
    """The engine process's end of the pipe: the jobs it holds by key, the engine loop, and the metrics recorded
    since the last hand-over, which go back with the next one."""

    def __init__(self, conn: Connection, settings: Settings):
        self.conn, self.settings = conn, settings
        self.sending = threading.Lock()  # the engine thread's hand-overs and this thread's refusals
        self.records = Records()
        self.jobs: dict[int, Job] = {}  # key -> Job, submitted here and not ended

    def send(self, message: tuple) -> None:
        with self.sending:
            try:
                self.conn.send(message)
            except OSError:  # the server's process is gone; the next read ends this one
                pass

    def outlet(self, batch: list[tuple[Job, tuple]]) -> None:
        """The engine loop's hand-over: its events (and the metrics recorded) as one message."""
        taken = self.records.take()
        if not batch and taken is None:
            return
        events = []
        for job, event in batch:
            if event[0] in ("done", "error"):
                self.jobs.pop(job.key, None)
            events.append((job.key, _wire(event)))
        self.send(("events", events, taken))

    def start(self, spec: EngineSpec) -> None:
        self.loaded = loaded = checkpoint.load(spec.checkpoint, spec.modality, spec.trust_modality_import)
        generation.prepare_model(loaded, spec.run)
        if next(loaded.model.parameters()).device.type == "cpu":
            # The engine's matmuls and the server's process (HTTP, SSE, JSON) share the cores: with torch's
            # default of one thread per core, torch's threads wait on each other behind the event loop (16
            # streams of a 4 x 128 character model on 2 cores, compiled, A/B: 5,998-6,009 tokens/s with one
            # torch thread, 1,826-1,869 with two).
            torch.set_num_threads(spec.threads or default_threads())
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        make_engine = lambda: build_engine(loaded, self.settings.slots, spec.run.compile)  # noqa: E731
        self.loop = EngineLoop(loaded, make_engine, self.records, sys.maxsize, self.settings.stream_interval, self.outlet)  # bounded there
        self.loop.start()

    def serve(self) -> None:
        """Requests, cancels and the stop from the pipe, until the stop or the server's process is gone."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the server's process is gone
                self.loop.stop(0)
                return
            if message[0] == "submit":
                self.submit(*message[1:])
            elif message[0] == "cancel":
                key, sample = message[1:]  # sample None: all its samples
                cancelled = self.jobs.pop(key, None) if sample is None else self.jobs.get(key)
                if cancelled is not None:
                    self.loop.cancel(cancelled, sample)
            elif message[0] == "stop":
                self.loop.stop(message[1])
                self.send(("stopped",))
                return

    def submit(self, key: int, parsed: Any, scored: bool, deadline: float | None, submitted: float) -> None:
        try:
            plan = plan_job(self.loaded, parsed, self.settings.max_new_tokens_limit, scored)
            self.jobs[key] = job = Job(plan, None, deadline, key=key, submitted=submitted)
            self.loop.submit(job)
        except Exception as e:  # noqa: BLE001 - planned once already by the server's process; answer it anyway
            self.jobs.pop(key, None)
            self.send(("events", [(key, _wire(("error", as_request_error(e))))], self.records.take()))


def _wire(event: tuple) -> tuple:
    """An event as it crosses the pipe: a RequestError as its fields (an exception with its own __init__
    arguments does not unpickle)."""
    if event[0] == "error":
        e = event[1]
        return ("error", (e.status, str(e), e.field, e.headers))
    return event


def default_threads(models: int = 1) -> int:
    """Torch threads for each of `models` engine processes on a CPU: the usable cores but the one the server's
    process needs, shared (engines that each took them all would wait on each other's threads), at least one."""
    return max(1, (usable_cores() - 1) // models)


# ---- the server's side -------------------------------------------------------------------------------------
class EngineProcess:
    """EngineLoop's surface (submit, cancel, stop, waiting, health) over a pipe to an engine process, started
    here (blocking until its model is loaded and its graphs compiled: DataError with the child's line if not)."""

    def __init__(self, spec: EngineSpec, settings: Settings, metrics: Metrics | Any):
        self.spec, self.settings, self.metrics = spec, settings, metrics
        self.jobs: dict[int, Job] = {}  # submitted, not ended
        self.keys = itertools.count(1)
        self.lock = threading.Lock()  # sends (the event loop's, the shutdown's) and `jobs`
        self.stopping = self.restarting = False
        self.rows_active = 0
        self.asyncio_loop: asyncio.AbstractEventLoop | None = None
        # One join at a time: two threads' waitpid on one child race, and the loser reads it as alive (the stopping
        # thread then killed a process that had exited, by a pid that may be another's by then).
        self.join_lock = threading.Lock()
        self.conn, self.process = self._spawn()

    def _spawn(self) -> tuple[Connection, Any]:
        ctx = multiprocessing.get_context("spawn")
        conn, child = ctx.Pipe()
        process = ctx.Process(target=engine_main, args=(child, self.spec, self.settings), name="arseq-engine", daemon=True)
        process.start()
        child.close()
        try:
            message = conn.recv()
        except EOFError:
            process.join(5)
            message = (  # its own error is on stderr above; spawn runs a script's top level again unless guarded
                "failed",
                f"the engine process exited with code {process.exitcode} before it was ready (a script that starts one needs `if __name__ == '__main__':`)",
            )
        if message[0] != "ready":
            process.join(5)
            conn.close()
            raise DataError(message[1])
        return conn, process

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the engine's events on `loop`, into the requests' queues."""
        self.asyncio_loop = loop
        loop.add_reader(self.conn.fileno(), self._read)

    def waiting(self) -> int:
        with self.lock:
            return waiting_jobs(self.jobs.values())

    def health(self) -> dict[str, Any]:
        ok = not self._exited() and not (self.stopping or self.restarting)
        return {"ok": ok, "rows_active": self.rows_active, "requests_waiting": self.waiting()}

    def submit(self, job: Job) -> None:
        """Send a request to the engine; RequestError 429 past `max_queue` waiting ones, 503 while shutting down
        or while a new engine process starts."""
        with self.lock:
            closed = "shutting down" if self.stopping else "restarting its engine" if self.restarting else None
            admit(closed, waiting_jobs(self.jobs.values()), self.settings.max_queue, self.metrics)
            job.key = next(self.keys)
            self.jobs[job.key] = job
            self._send(("submit", job.key, job.plan.parsed, job.plan.scored, job.deadline, job.submitted))

    def cancel(self, job: Job, sample: int | None = None) -> None:
        """The client went away: its rows leave at the engine's next step (`sample`: see EngineLoop.cancel)."""
        with self.lock:
            if sample is not None:
                if job.key in self.jobs:
                    self._send(("cancel", job.key, sample))
                return
            job.cancelled = True
            if self.jobs.pop(job.key, None) is not None:  # the engine counts it (its metrics come back)
                self._send(("cancel", job.key, None))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop admitting; the engine finishes its rows (cancelled after `timeout` seconds) and exits."""
        with self.lock:
            self.stopping = True
            self._send(("stop", timeout))
        with self.join_lock:
            self.process.join(timeout + 10)
            if self.process.exitcode is None:
                log.error("the engine process did not stop in %g s; killing it", timeout + 10)
                self.process.kill()
                self.process.join(5)

    def _exited(self) -> bool:
        """Whether the engine process has ended, read from its sentinel: `is_alive` would reap it (see join_lock)."""
        return bool(multiprocessing.connection.wait([self.process.sentinel], 0))

    def _send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the engine process is gone: its end of the pipe is read as lost (_lost)
            pass

    def _read(self) -> None:
        """The engine's messages, on the event loop, as they come."""
        try:
            while self.conn.poll():
                message = self.conn.recv()
                if message[0] == "events":
                    self._deliver(message[1], message[2])
        except (EOFError, OSError):
            self._lost()

    def _deliver(self, events: list[tuple[int, tuple]], taken: tuple[dict, dict, dict] | None) -> None:
        now, out = time.monotonic(), []
        with self.lock:
            for key, event in events:
                job = self.jobs.get(key)
                if job is None:  # cancelled here already
                    continue
                if event[0] == "error":
                    event = ("error", RequestError(*event[1]))
                if event[0] in ("done", "error"):
                    del self.jobs[key]
                elif job.first_token is None:
                    job.first_token = now
                out.append((job, event))
        for job, event in out:
            assert job.events is not None
            job.events.put_nowait(event)
        if taken is not None:
            self._replay(*taken)

    def _replay(self, gauges: dict, counts: dict, observed: dict) -> None:
        """The child's metrics onto this process's registry."""
        for (name, values), value in gauges.items():
            self._metric(name, values).set(value)
            if name == "rows_active":
                self.rows_active = int(value)
        for (name, values), amount in counts.items():
            self._metric(name, values).inc(amount)
        for name, values in observed.items():
            histogram = self._metric(name, ())
            for value in values:
                histogram.observe(value)

    def _metric(self, name: str, values: tuple) -> Any:
        if name not in RECORDED:
            raise ValueError(f"the engine process recorded an unknown metric {name!r}")
        metric = getattr(self.metrics, name)
        return metric.labels(*values) if values else metric

    def _lost(self) -> None:
        """The engine process ended (or its pipe broke): fail its requests; unless stopping, start a new one."""
        assert self.asyncio_loop is not None
        self.asyncio_loop.remove_reader(self.conn.fileno())
        code = None
        if not self.stopping:  # while stopping, `stop` waits for it
            with self.join_lock:
                self.process.join(5)
                code = self.process.exitcode
        with self.lock:
            failed, self.jobs = list(self.jobs.values()), {}
            self.rows_active = 0
            self.restarting = not self.stopping
        for job in failed:
            assert job.events is not None
            status, why = (503, "the server is shutting down") if self.stopping else (500, f"the engine process exited (code {code})")
            job.events.put_nowait(("error", RequestError(status, why, None)))
        if self.stopping:
            return
        log.error("the engine process exited (code %s); starting a new one", code)
        self.conn.close()
        self.asyncio_loop.run_in_executor(None, self._restart)

    def _restart(self) -> None:
        try:
            conn, process = self._spawn()
        except DataError as e:
            log.error("the engine process could not start again: %s", e)
            return  # /health stays 503: nothing can be served
        assert self.asyncio_loop is not None
        with self.lock:
            self.conn, self.process, self.restarting = conn, process, False
        self.asyncio_loop.call_soon_threadsafe(self.asyncio_loop.add_reader, conn.fileno(), self._read)
