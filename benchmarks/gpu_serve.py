"""The GPU check's server arm: `arseq serve`'s engines on the GPU, as the verb runs them.

The music and text models the check trained are served together (`--checkpoint music=... --checkpoint text=...`:
an engine process each, started at once, compiled with CUDA graphs). Then, at the same time: 8 text completions
(one of them streamed) and 2 music samples from `/v1/generate`, whose MIDI, MusicXML and PNG must come back.
Records ok / the first failure, the engines' start, and each kind's seconds and tokens/s.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _post(port: int, path: str, body: dict, timeout: float) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{path}: {r.status} {data[:200]!r}")
    if body.get("stream"):  # server-sent events: each `data:` line a chunk, the last `[DONE]`
        chunks = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: {")]
        if failed := [c["error"] for c in chunks if "error" in c]:
            raise RuntimeError(f"{path}: the stream ended with {failed[0]}")
        return {"choices": [{"token_ids": [t for c in chunks for t in c["choices"][0].get("token_ids", [])]}]}
    return json.loads(data)


def _completion(port: int, i: int, tokens: int, timeout: float) -> int:
    body = {"model": "text", "prompt": "ROMEO:", "max_tokens": tokens, "seed": i, "stream": i == 0}
    out = _post(port, "/v1/completions", body, timeout)
    return sum(len(c["token_ids"]) for c in out["choices"])


def _music(port: int, timeout: float) -> int:
    out = _post(port, "/v1/generate", {"model": "music", "num_samples": 2, "seed": 0, "max_new_tokens": 256}, timeout)
    kinds = {Path(f["name"]).suffix for f in out["files"]}
    if not {".mid", ".musicxml", ".png"} <= kinds or not all(base64.b64decode(f["data"]) for f in out["files"]):
        raise RuntimeError(f"/v1/generate wrote {sorted(kinds)}")
    return sum(len(s["tokens"]) for s in out["samples"])


def check_serve(runs: dict[str, Path], device: str, timeout: float = 120) -> dict[str, Any]:
    """Serve `runs` (name -> run folder) on `device` and send them work; ok / error, seconds, tokens/s."""
    import uvicorn

    from arseq.app.run_options import RunOptions
    from arseq.artifacts import checkpoint
    from arseq.serve.app import create_models_app
    from arseq.serve.engine_process import EngineSpec
    from arseq.serve.settings import Settings

    run = RunOptions(device=device, compile="on")
    t0 = time.perf_counter()
    engines = {}
    for name, path in runs.items():
        loaded = checkpoint.load(str(path))
        loaded.model.to("meta")  # the server's process plans and writes; the engine process holds the weights
        engines[name] = (loaded, EngineSpec(str(path), None, False, run, threads=1))
    app = create_models_app(engines, Settings(slots=8))
    started = time.perf_counter() - t0
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        t1 = time.perf_counter()
        with ThreadPoolExecutor(9) as pool:
            music = pool.submit(_music, port, timeout)
            texts = [pool.submit(_completion, port, i, 128, timeout) for i in range(8)]
            text_tokens = sum(f.result() for f in texts)
            text_s = time.perf_counter() - t1
            music_tokens = music.result()
            music_s = time.perf_counter() - t1
        return {
            "ok": True,
            "engines_start_s": round(started, 2),
            "text": {"requests": 8, "tokens": text_tokens, "seconds": round(text_s, 2), "tokens_per_s": round(text_tokens / text_s, 1)},
            "music": {"samples": 2, "tokens": music_tokens, "seconds": round(music_s, 2), "files": "mid, musicxml, png"},
        }
    finally:
        server.should_exit = True
        thread.join(30)
