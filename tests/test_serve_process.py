"""The engine in a process of its own (`arseq serve`'s way): the same samples as in one process, its metrics on
the server's /metrics, a client that leaves frees its slot, and an engine process that dies fails its requests
and is replaced while the server goes on."""

from __future__ import annotations

import json
import os
import signal

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from serving import Served, events, stopped_row_frees_its_slot, wait_for  # noqa: E402

from arseq.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(trained):
    return trained / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def remote(ckpt):
    s = Served(ckpt, process=True, slots=2, max_queue=1)
    yield s
    s.stop()


def test_the_same_samples_and_metrics_as_in_one_process(remote, ckpt):
    body = {"prompt": "the cat", "max_tokens": 30, "n": 2, "seed": 7, "temperature": 0.9}
    local = Served(ckpt, slots=2)
    try:
        expected = local.post("/v1/completions", body)[1]["choices"]
    finally:
        local.stop()
    before = remote.metric("arseq_generated_tokens_total")
    status, out = remote.post("/v1/completions", body)
    assert status == 200 and [c["token_ids"] for c in out["choices"]] == [c["token_ids"] for c in expected]
    conn, r = remote.stream("/v1/completions", body)
    frames = [json.loads(d) for _, d in events(r) if d != "[DONE]"]
    conn.close()
    streamed = [[t for f in frames if f["choices"][0]["index"] == i for t in f["choices"][0]["token_ids"]] for i in range(2)]
    assert streamed == [c["token_ids"] for c in expected]
    # the engine process's metrics, replayed onto the server's registry: every token counted once
    wait_for(lambda: remote.metric("arseq_generated_tokens_total") - before == 2 * sum(len(c["token_ids"]) for c in expected))
    assert remote.metric("arseq_time_to_first_token_seconds_count") >= 2 and remote.metric("arseq_rows_active") == 0
    idle = {"status": "ok", "rows_active": 0, "requests_waiting": 0}
    assert json.loads(remote.get("/health")[1]) == {**idle, "models": {"tiny": idle}}


def test_a_client_that_leaves_frees_its_slot_and_the_queue_is_bounded(remote):
    long = {"prompt": "the", "max_tokens": 4000, "temperature": 0}  # greedy: no EOS before the budget
    streams = []
    for _ in range(2):  # both slots decoding (one at a time: a request waits until its first token)
        streams.append(remote.stream("/v1/completions", long))
        next(events(streams[-1][1]))
    waiting = remote.stream("/v1/completions", long)
    wait_for(lambda: remote.metric("arseq_requests_waiting") == 1)
    status, headers, _ = remote.request("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})
    assert status == 429 and headers["retry-after"] == "1"
    cancelled = remote.metric("arseq_requests_cancelled_total", 'reason="disconnect"')
    for c, _ in [*streams, waiting]:
        c.sock.close()
        c.close()
    wait_for(lambda: remote.metric("arseq_rows_active") == 0)
    wait_for(lambda: remote.metric("arseq_requests_cancelled_total", 'reason="disconnect"') - cancelled == 3)
    assert remote.post("/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200


def test_a_row_stopped_by_a_stop_string_leaves_the_engine_process(remote):
    stopped_row_frees_its_slot(remote)  # the cancel crosses the pipe


def test_a_dead_engine_process_fails_its_requests_and_is_replaced(remote):
    conn, r = remote.stream("/v1/completions", {"prompt": "the", "max_tokens": 4000, "temperature": 0})
    stream = events(r)
    next(stream)
    old = remote.state.loop.process
    os.kill(old.pid, signal.SIGKILL)
    rest = [d for _, d in stream]
    conn.close()
    assert rest[-1] == "[DONE]" and json.loads(rest[-2])["error"]["code"] == 500 and "engine process exited" in rest[-2]
    wait_for(lambda: remote.state.loop.process is not old and json.loads(remote.get("/health")[1])["status"] == "ok", timeout=120)
    assert remote.post("/v1/completions", {"prompt": "a", "max_tokens": 2, "seed": 1})[0] == 200


def test_an_engine_that_cannot_start_is_one_line_and_exit_2(ckpt, capsys):
    assert main(["serve", "--checkpoint", str(ckpt), "--device", "cuda:7", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda" in err[0].lower() and "Traceback" not in err[0]
