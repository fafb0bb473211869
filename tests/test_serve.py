"""`arseq serve` over real HTTP on a loopback port: completions and generate for every built-in modality,
streaming and not; seeded requests equal `arseq generate --seed`; a client that leaves frees its slot; a full
queue gives 429; bad requests get one-line 4xx naming the field and the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import re
import wave
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from serving import Served, events, tiny_model, wait_for  # noqa: E402

from arseq.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return lambda name: tiny_model(name, tmp_path_factory)


@pytest.fixture(scope="module")
def text(trained):
    s = Served(trained / "checkpoints" / "last.ckpt", slots=4, max_queue=8)
    yield s
    s.stop()


def cli_files(tmp_path, ckpt, *args):
    out = tmp_path / "cli"
    out.mkdir()  # a folder: proteins write designs.fasta in it, as the server does
    assert main(["generate", "--checkpoint", str(ckpt), "--out", str(out), *map(str, args)]) == 0
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def served_files(body):
    return {f["name"]: base64.b64decode(f["data"]) for f in body["files"]}


def test_text_completion_equals_generate_and_streams(text, trained, tmp_path):
    body = {"prompt": "the cat", "max_tokens": 40, "n": 2, "seed": 11, "temperature": 0.8}
    status, out = text.post("/v1/completions", body)
    assert status == 200 and out["object"] == "text_completion" and len(out["choices"]) == 2
    assert out["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in out["choices"])
    files = cli_files(
        tmp_path,
        trained / "checkpoints" / "last.ckpt",
        "--prompt",
        "the cat",
        "--max-new-tokens",
        40,
        "--num-samples",
        2,
        "--seed",
        11,
        "--temperature",
        0.8,
    )
    assert [files[f"sample_{i:03d}.txt"].decode() for i in range(2)] == ["the cat" + c["text"] for c in out["choices"]]

    conn, r = text.stream("/v1/completions", body)
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    frames = [data for _, data in events(r)]
    conn.close()
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    streamed = ["".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in range(2)]
    assert streamed == [c["text"] for c in out["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == [c["finish_reason"] for c in out["choices"]]


def test_token_id_prompts_and_the_same_sample_under_load(text):
    ids = text.loaded.tokenizer.encode("a dog")
    alone = text.post("/v1/completions", {"prompt": ids, "max_tokens": 30, "seed": 5})[1]["choices"][0]["token_ids"]
    conns = [text.stream("/v1/completions", {"prompt": "we like", "max_tokens": 60, "seed": s}) for s in (1, 2)]
    busy = text.post("/v1/completions", {"prompt": ids, "max_tokens": 30, "seed": 5})[1]["choices"][0]["token_ids"]
    for c, r in conns:
        assert list(events(r))[-1][1] == "[DONE]"
        c.close()
    assert busy == alone and len(alone) > 0


def test_generate_text_files_and_progress_events(text):
    conn, r = text.stream("/v1/generate", {"prompt": "birds", "num_samples": 2, "max_new_tokens": 20, "seed": 3})
    seen = list(events(r))
    conn.close()
    names = [n for n, _ in seen]
    assert names[0] == "start" and "token" in names and names[-2] == "result" and seen[-1][1] == "[DONE]"
    result = json.loads(seen[-2][1])
    assert sorted(served_files(result)) == ["sample_000.txt", "sample_001.txt"]
    assert all(f["media_type"] == "text/plain" for f in result["files"]) and result["seed"] == 3
    tokens = [json.loads(d)["token"] for n, d in seen if n == "token" and json.loads(d)["sample"] == 0]
    assert tokens == result["samples"][0]["tokens"]


def test_music_generate_with_key_and_meter_equals_generate(models, tmp_path):
    from arseq.modalities.music.audio import duration_seconds

    ckpt = models("music")
    s = Served(ckpt)
    try:
        info = json.loads(s.get("/v1/model")[1])
        assert info["modality"] == "music" and {"key", "meter"} <= set(info["conditions"])
        key, meter = info["conditions"]["key"][0], info["conditions"]["meter"][0]
        options = {o["name"]: o for o in info["options"]}
        assert options["temperature"]["default"] == 0.9 and options["bars"]["group"] == "music"
        status, body = s.post(
            "/v1/generate", {"num_samples": 2, "max_new_tokens": 80, "bars": 2, "seed": 4, "conditions": {"key": key, "meter": meter}}
        )
        assert status == 200, body
        files = served_files(body)
        assert sorted(files) == [f"sample_{i:03d}{x}" for i in range(2) for x in (".mid", ".musicxml", ".png", ".wav")]
        cli = cli_files(
            tmp_path, ckpt, "--num-samples", 2, "--max-new-tokens", 80, "--bars", 2, "--seed", 4, "--cond", f"key={key}", "--cond", f"meter={meter}"
        )
        assert all(files[n] == cli[n] for n in cli if n.endswith((".mid", ".png")))
        tok = s.loaded.tokenizer
        for i, sample in enumerate(body["samples"]):
            with wave.open(io.BytesIO(files[f"sample_{i:03d}.wav"])) as w:
                seconds = w.getnframes() / w.getframerate()
            assert abs(seconds - duration_seconds(tok.decode_events(sample["prompt_tokens"] + sample["tokens"]), tok.ppq)) < 1e-3
        status, body = s.post("/v1/completions", {"prompt": [tok.bos_id], "max_tokens": 12, "seed": 1})
        assert status == 200 and body["choices"][0]["text"].split()[0] != ""  # token names
    finally:
        s.stop()


def test_image_generate_with_a_digit_equals_generate(models, tmp_path):
    ckpt = models("image")
    s = Served(ckpt)
    try:
        info = json.loads(s.get("/v1/model")[1])
        assert info["conditions"]["label"] == [str(d) for d in range(10)]
        status, body = s.post("/v1/generate", {"num_samples": 3, "label": "7", "seed": 2})
        assert status == 200, body
        files = served_files(body)
        assert sorted(files) == ["grid.png", "sample_000_7.png", "sample_001_7.png", "sample_002_7.png"]
        assert files == cli_files(tmp_path, ckpt, "--num-samples", 3, "--label", 7, "--seed", 2)
        status, body = s.post("/v1/generate", {"label": "12"})  # the modality's refusal, in the request's names
        assert (status, body["error"]["field"]) == (422, "label") and body["error"]["message"].startswith("label: unknown class label '12'")
        conn, r = s.stream("/v1/completions", {"max_tokens": 8, "seed": 0, "conditions": {"label": "3"}})
        assert list(events(r))[-1][1] == "[DONE]"
        conn.close()
        for key, value in (("stop", "\n"), ("echo", True)):  # an image's samples are no text
            status, body = s.post("/v1/completions", {"max_tokens": 8, key: value})
            assert status == 422 and body["error"]["field"] == key and "not text" in body["error"]["message"]
    finally:
        s.stop()


def test_protein_generate_with_a_tag_and_motif_equals_generate(models, tmp_path):
    ckpt = models("protein")
    s = Served(ckpt)
    try:
        info = json.loads(s.get("/v1/model")[1])
        assert info["conditions"] == {"tag": ["polyA", "polyW"]} and info["prompt"] == "motif"
        request = {"num_samples": 3, "prompt": "MK", "max_length": 20, "seed": 9, "conditions": {"tag": "polyW"}}
        status, body = s.post("/v1/generate", request)
        assert status == 200, body
        files = served_files(body)
        assert sorted(files) == ["designs.csv", "designs.fasta"]
        cli = cli_files(tmp_path, ckpt, "--num-samples", 3, "--prompt", "MK", "--max-length", 20, "--seed", 9, "--cond", "tag=polyW")
        assert files == cli and all(sample["text"] is not None for sample in body["samples"])
        status, body = s.post("/v1/completions", {"prompt": "MA", "max_tokens": 10, "seed": 9})
        assert status == 200 and body["choices"][0]["text"].isalpha() or body["choices"][0]["text"] == ""
        echoed = s.post("/v1/completions", {"prompt": "MA", "max_tokens": 10, "seed": 9, "echo": True})[1]
        assert echoed["choices"][0]["text"] == "MA" + body["choices"][0]["text"]  # the motif, then the design
    finally:
        s.stop()


BAD = [  # (body or raw bytes, status, field)
    (b"{not json", 400, None),
    ([1, 2], 400, None),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"temperature": -1}, 422, "temperature"),
    ({"top_p": 0}, 422, "top_p"),
    ({"top_k": 1.5}, 400, "top_k"),
    ({"max_tokens": 10**9}, 422, "max_tokens"),  # named as sent: OpenAI's name here, arseq's in the next
    ({"max_new_tokens": 10**9}, 422, "max_new_tokens"),
    ({"n": 0}, 422, "n"),
    ({"n": 1000}, 422, "n"),
    ({"num_samples": "2"}, 400, "num_samples"),
    ({"seed": True}, 400, "seed"),
    ({"colour": "red"}, 400, "colour"),
    ({"out": "/tmp/x"}, 400, "out"),
    ({"draft": "runs/other"}, 400, "draft"),
    ({"checkpoint": "runs/other"}, 400, "checkpoint"),
    ({"conditions": {"key": "C major"}}, 422, "conditions"),
    ({"prompt": {"file": "/etc/passwd"}}, 400, "prompt"),
    ({"prompt": [10**6]}, 422, "prompt"),
    ({"prompt": "x" * 5000}, 422, "prompt"),
    ({"prompt": "hi", "stop": ["\n"] * 5}, 422, "stop"),
    ({"stream": "yes"}, 400, "stream"),
]


@pytest.mark.parametrize("body, status, field", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_one_line_4xx_and_the_server_goes_on(text, body, status, field):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, _, data = text.request("POST", "/v1/completions", raw=raw)
    error = json.loads(data)["error"]
    assert got == status and error["field"] == field and "\n" not in error["message"], error
    assert error["message"].startswith(f"{field}: " if field else ""), error
    assert text.post("/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200
    if field in ("n", "num_samples"):  # arseq's own endpoint takes n too, and names it as sent
        assert text.post("/v1/generate", body)[1]["error"]["field"] == field


def test_body_limit_paths_and_a_failing_request(text, monkeypatch):
    status, _, data = text.request("POST", "/v1/generate", raw=b"{" + b" " * (2 << 20) + b"}")
    assert status == 413 and "limit" in json.loads(data)["error"]["message"]
    status, body = text.post("/v1/generate", {"prompt_file": "/etc/passwd"})
    assert status == 400 and body["error"]["field"] == "prompt_file"
    modality = text.loaded.modality
    real = type(modality).plan

    def broken(tok, request):
        plan = real(modality, tok, request)
        plan.constraint = lambda: lambda rows: 1 / 0
        return plan

    monkeypatch.setattr(modality, "plan", broken)
    status, body = text.post("/v1/completions", {"prompt": "a", "max_tokens": 5})
    assert status == 500 and "ZeroDivisionError" in body["error"]["message"]
    monkeypatch.undo()
    assert text.post("/v1/completions", {"prompt": "a", "max_tokens": 5})[0] == 200


def test_disconnect_frees_the_slot_and_a_full_queue_gives_429(trained):
    s = Served(trained / "checkpoints" / "last.ckpt", slots=1, max_queue=1)
    try:
        long = {"prompt": "the", "max_tokens": 4000, "temperature": 0}  # greedy: the text goes on, no EOS
        conn, r = s.stream("/v1/completions", long)
        next(events(r))  # decoding: its row holds the one slot
        waiting = s.stream("/v1/completions", long)
        wait_for(lambda: s.metric("arseq_requests_waiting") == 1)
        status, headers, data = s.request("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert status == 429 and headers["retry-after"] == "1" and json.loads(data)["error"]["code"] == 429
        assert s.metric("arseq_requests_rejected_total", 'reason="queue_full"') == 1
        for c, _ in (waiting, (conn, r)):
            c.sock.close()
            c.close()
        wait_for(lambda: s.metric("arseq_rows_active") == 0 and s.metric("arseq_requests_cancelled_total", 'reason="disconnect"') == 2)
        c = s.conn()  # not streamed: the server notices within a second or so
        c.request("POST", "/v1/completions", body=json.dumps(long), headers={"Content-Type": "application/json"})
        wait_for(lambda: s.metric("arseq_rows_active") == 1)
        c.sock.close()
        c.close()
        wait_for(lambda: s.metric("arseq_rows_active") == 0 and s.metric("arseq_requests_cancelled_total", 'reason="disconnect"') == 3)
        assert s.post("/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200
    finally:
        s.stop()


def test_timeout_health_metrics_and_page(models):
    s = Served(models("image"), slots=1, timeout=1.0)  # 64 images of 66 tokens, one at a time: seconds
    try:
        status, body = s.post("/v1/generate", {"num_samples": 64})
        assert status == 504 and body["error"]["message"].startswith("timeout")
        assert json.loads(s.get("/health")[1])["status"] == "ok"
        assert s.post("/v1/completions", {"max_tokens": 3})[0] == 200
        text = s.get("/metrics")[1].decode()
        for name in (
            "arseq_requests_running",
            "arseq_requests_waiting",
            "arseq_generated_tokens_total",
            "arseq_time_to_first_token_seconds_bucket",
            "arseq_inter_token_latency_seconds_bucket",
            "arseq_request_latency_seconds_bucket",
            "arseq_requests_rejected_total",
            'reason="timeout"',
        ):
            assert name in text, name
        wait_for(lambda: s.metric("arseq_rows_active") == 0)
        status, page = s.get("/")
        assert status == 200 and b"/v1/model" in s.get("/static/app.js")[1] and b"<script" in page
        assert b"http://" not in page and b"https://" not in page  # nothing from elsewhere
        icon = s.get("/static/icon.svg")
        assert b'href="/static/icon.svg"' in page and icon[0] == 200 and icon[1].startswith(b"<svg")
    finally:
        s.stop()


def test_sigterm_finishes_running_requests_and_exits_0(trained):
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "arseq", "serve", "--checkpoint", str(trained), "--port", str(port), "--log-level", "warning"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180  # a fresh interpreter importing torch on busy cores: tens of seconds
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        s = Served.__new__(Served)
        s.port = port
        conn, r = s.stream("/v1/completions", {"prompt": "the", "max_tokens": 100, "temperature": 0})
        stream = events(r)
        next(stream)
        proc.send_signal(signal.SIGTERM)
        assert list(stream)[-1][1] == "[DONE]"  # the running request finishes
        conn.close()
        assert proc.wait(60) == 0
        assert "did not stop" not in proc.stderr.read()  # the engine process exited by itself, and was seen to
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_verb_checks_its_flags(capsys):
    assert main(["serve", "--checkpoint", "x", "--slots", "0"]) == 2
    assert "--slots must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "x", "--port", "65536"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err


def test_a_port_in_use_or_a_bad_host_is_one_line_before_any_model_loads(trained, monkeypatch, capsys):
    import socket

    from arseq.serve import command

    monkeypatch.setattr(command, "build", lambda *a: pytest.fail("a model was loaded before the socket was bound"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(trained), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--port {port}" in err[0] and "in use" in err[0], err
    assert main(["serve", "--checkpoint", str(trained), "--host", "256.1.1.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--host 256.1.1.1" in err[0], err


def test_the_server_logs_each_line_once_with_its_time(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "nothing.ckpt"), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    warned = [line for line in err if "anyone who can reach it" in line]
    assert len(warned) == 1 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ arseq.serve WARNING binding 0.0.0.0", warned[0]), err
    assert "nothing.ckpt" in err[-1]


def test_the_dna_plugin_is_served_like_a_built_in(tmp_path, monkeypatch):
    from pathlib import Path

    from arseq import modalities

    example = Path(__file__).resolve().parents[1] / "examples" / "arseq-dna"
    monkeypatch.syspath_prepend(str(example))
    if "dna" not in modalities.registered():  # registered as if pip-installed (see test_plugins.py)
        info = tmp_path / "site" / "arseq_dna-0.1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: arseq-dna\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[{modalities.ENTRY_POINT_GROUP}]\ndna = arseq_dna.modality:DnaModality\n")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = tmp_path / "dna.yaml"
    config.write_text((example / "arseq_dna" / "configs" / "tiny.yaml").read_text())
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--trainer.max_steps",
                "4",
                "--trainer.val_check_interval",
                "4",
                "--trainer.limit_val_batches",
                "1",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.default_root_dir",
                str(tmp_path / "runs"),
                "--data.block_size",
                "64",
                "--model.n_layer",
                "1",
                "--model.d_model",
                "32",
            ]
        )
        == 0
    )
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    s = Served(ckpt)
    try:
        assert json.loads(s.get("/v1/model")[1])["modality"] == "dna"
        status, body = s.post("/v1/generate", {"num_samples": 3, "length": 40, "seed": 1})
        assert status == 200, body
        assert served_files(body) == cli_files(tmp_path, ckpt, "--num-samples", 3, "--length", 40, "--seed", 1)
        status, body = s.post("/v1/completions", {"prompt": "ATG", "max_tokens": 5})
        assert status == 422 and body["error"]["field"] == "prompt"  # a plugin's prompt may be a file: token ids only
        conn, r = s.stream("/v1/completions", {"prompt": s.loaded.tokenizer.encode("ATG"), "max_tokens": 12, "seed": 0})
        frames = [d for _, d in events(r)]
        conn.close()
        assert frames[-1] == "[DONE]" and len(frames) >= 3
    finally:
        s.stop()


def test_a_budget_past_the_limit_is_planned_within_it(models):
    """A music model's learned budget past --max-new-tokens-limit: the request is planned again with the limit as
    its budget, so that its pieces end at a bar line before the limit, as they do before their own budget."""
    import music21

    from arseq.artifacts.checkpoint import load
    from arseq.modalities.music.grammar import LANDING_TOKENS
    from arseq.modalities.music.reading import prompt_tokens
    from arseq.serve.jobs import plan_job
    from arseq.serve.request_body import parse
    from arseq.serve.schema import Schema

    loaded, limit = load(models("music")), LANDING_TOKENS + 40
    tok = loaded.tokenizer
    own = plan_job(loaded, parse(Schema(loaded, 10**4), {"seed": 0}), 10**4)
    assert own.cfg.max_new_tokens > limit  # the test is not vacuous: the model's own budget is past the limit
    job = plan_job(loaded, parse(Schema(loaded, limit), {"seed": 0, "min_bars": 1}), limit)
    assert job.cfg.max_new_tokens == limit and job.parsed.request.sampling.max_new_tokens == limit
    start = prompt_tokens(tok, Path(music21.corpus.getWork("bwv66.6")), 2)[1:]  # a chorale's pickup and two bars
    assert len(start) > 40 and start.count(tok.bar_id) == 3
    row = list(job.rows[0].prompt)
    job.constraint([row])  # the engine asks first with the prompt alone
    row += start
    mask = job.constraint([row])[0]
    assert mask[tok.eos_id] and not mask[tok.bar_id]  # landed 40 tokens in: no new bar, it may end
