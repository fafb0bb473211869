"""Work on input files in worker processes (prepare's reading, a modality's own): results in input order, a bounded number in flight, and a
file that hangs or kills its worker skipped with the reason instead of ending the run.

Why not `ProcessPoolExecutor` (what music reading used before): one worker that dies breaks the whole
pool (`BrokenProcessPool`, the run ends), and a task cannot be cancelled once it runs, so a file that
hangs inside C code (a MIDI parser) holds its worker forever; `SIGALRM` in the worker stops pure Python
only. Here each worker has its own pipe and runs one file at a time, so the parent knows which file
each worker holds and since when, kills that worker past the time budget, and starts another.

Workers are forked (where the platform can): they inherit the imported modules and the function to
run, so neither is pickled; only the jobs and results cross the pipes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator

from arseq.limits import file_seconds

log = logging.getLogger(__name__)

_configured: dict[str, Any] = {}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def configured(workers: int | None, seconds: float | None = None) -> Iterator[None]:
    """Within the block, readers use `workers` processes and a budget of `seconds` a file (`data.workers`
    and `data.file_seconds` of the run); forked workers inherit the setting."""
    old = dict(_configured)
    _configured.update(workers=workers, seconds=seconds)
    try:
        yield
    finally:
        _configured.clear()
        _configured.update(old)


def configured_workers() -> int:
    """The worker count set by `configured` (prepare's `data.workers`), else the usable cores."""
    return _configured.get("workers") or usable_cores()


def file_budget() -> float:
    """Seconds one file may take to read: `data.file_seconds`, else ARSEQ_FILE_SECONDS, else 120."""
    return _configured.get("seconds") or file_seconds()


@dataclass
class Failed:
    """A job whose worker crashed or ran past the time budget; `reason` is one line for the user."""

    reason: str


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any]):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, fn), daemon=True)
        self.process.start()
        child.close()
        self.task: int | None = None
        self.since = 0.0

    def give(self, index: int, job: Any) -> None:
        self.conn.send((index, job))
        self.task, self.since = index, time.monotonic()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _serve(conn: Connection, fn: Callable[[Any], Any]) -> None:
    """A worker's loop: run `fn` on each job received until None; exceptions go back as `Failed`."""
    _one_thread_torch()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        index, job = message
        try:
            result: Any = fn(job)
        except Exception as e:  # the parent reports it as this file's reason; the worker goes on
            result = Failed(f"{type(e).__name__}: {e}".splitlines()[0][:300])
        conn.send((index, result))


def _one_thread_torch() -> None:
    """In a forked worker, torch on one thread: the OpenMP pool of a parent that ran torch in parallel (the
    image codebook's k-means) does not survive the fork, and the child's first parallel op hangs on its
    lock. Torch is used only if the parent imported it (the workers are one per core anyway)."""
    torch = sys.modules.get("torch")
    if torch is not None and mp.parent_process() is not None:
        torch.set_num_threads(1)


def ordered_map(
    fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int | None = None, seconds: float | None = None, ahead: int = 8
) -> Iterator[Any]:
    """`fn(job)` for each job, yielded in the order of `jobs`; a job whose worker dies or takes longer
    than `seconds` yields `Failed(reason)` instead. With one worker (or `workers` <= 1) it runs here, in
    this process (no time budget but what `fn` enforces itself). At most `ahead` jobs per worker are in
    flight or waiting to be yielded, so memory stays bounded however many files there are."""
    workers = configured_workers() if workers is None else workers
    if workers <= 1:
        yield from map(_failed_as_result(fn), jobs)
        return
    pool = _Pool(fn, workers, seconds)
    source = iter(jobs)
    done: dict[int, Any] = {}
    sent = yielded = 0
    exhausted = False
    try:
        while True:
            for w in pool.idle():  # hand out work, keeping the window bounded
                if sent - yielded >= ahead * workers:
                    break
                job = next(source, _END)
                if job is _END:
                    exhausted = True
                    break
                w.give(sent, job)
                sent += 1
            while yielded in done:
                yield done.pop(yielded)
                yielded += 1
            if pool.busy():
                done.update(pool.results())
            elif exhausted:
                return
    finally:
        pool.close()


_END = object()  # the end of the jobs (a job may be None)


def _failed_as_result(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`fn` whose exceptions become `Failed`, as in a worker: this job fails, the others go on."""

    def run(job: Any) -> Any:
        try:
            return fn(job)
        except Exception as e:
            return Failed(f"{type(e).__name__}: {e}".splitlines()[0][:300])

    return run


class _Pool:
    """Workers, each with the index of the job it holds; one that dies or runs past `seconds` is replaced."""

    def __init__(self, fn: Callable[[Any], Any], workers: int, seconds: float | None):
        self.ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.fn, self.seconds = fn, seconds
        self.workers = [_Worker(self.ctx, fn) for _ in range(workers)]

    def idle(self) -> list[_Worker]:
        return [w for w in self.workers if w.task is None]

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.task is not None]

    def results(self) -> dict[int, Any]:
        """Wait for a busy worker to answer (or for the first to run out of time); the results by job index."""
        busy, seconds = self.busy(), self.seconds
        timeout = None if seconds is None else max(0.0, min(w.since + seconds for w in busy) - time.monotonic())
        ready = wait([w.conn for w in busy], timeout=timeout)
        done: dict[int, Any] = {}
        for i, w in enumerate(self.workers):
            task = w.task
            if task is None:
                continue
            if w.conn in ready:
                try:
                    index, result = w.conn.recv()
                    done[index], w.task = result, None
                except (EOFError, OSError):
                    w.process.join(timeout=5)
                    done[task] = Failed(f"the reading worker died on it (exit code {w.process.exitcode})")
                    log.warning("a reading worker died (exit code %s); starting another", w.process.exitcode)
                    self.workers[i] = _Worker(self.ctx, self.fn)
                    w.conn.close()
            elif seconds is not None and time.monotonic() - w.since >= seconds:
                done[task] = Failed(f"still reading after {seconds:g} s (the per-file budget, data.file_seconds or ARSEQ_FILE_SECONDS); skipped")
                w.stop(kill=True)
                self.workers[i] = _Worker(self.ctx, self.fn)
        return done

    def close(self) -> None:
        for w in self.workers:
            w.stop(kill=w.task is not None)
