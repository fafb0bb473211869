"""The GPU check's server arm: `arseq serve` on the GPU, as a user starts it.

The music and text models the check trained are served together (`--checkpoint music=... --checkpoint text=...`:
an engine process each, started at once, compiled with CUDA graphs), through bench_serve's launcher and
streaming client. Then, at the same time: 8 streamed text completions and 2 music samples from `/v1/generate`,
whose MIDI, MusicXML and PNG must come back; then SIGTERM, after which the server must exit 0. Records ok / the
first failure, the time until the server listened, and each kind's tokens and seconds.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_serve import HOST, one, start, stop


def _music(port: int, timeout: float) -> int:
    """Two music samples from /v1/generate; their token count, once their three files came back."""
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    body = {"model": "music", "num_samples": 2, "seed": 0, "max_new_tokens": 256}
    c.request("POST", "/v1/generate", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"/v1/generate: {r.status} {data[:200]!r}")
    out = json.loads(data)
    kinds = {Path(f["name"]).suffix for f in out["files"]}
    if not {".mid", ".musicxml", ".png"} <= kinds or not all(base64.b64decode(f["data"]) for f in out["files"]):
        raise RuntimeError(f"/v1/generate wrote {sorted(kinds)}")
    return sum(len(s["tokens"]) for s in out["samples"])


async def _together(port: int, timeout: float) -> tuple[list[dict[str, Any]], int, float, float]:
    t0 = time.perf_counter()
    music = asyncio.create_task(asyncio.to_thread(_music, port, timeout))
    texts = await asyncio.gather(*(one(port, {"model": "text", "prompt": "ROMEO:", "max_tokens": 128, "seed": i}) for i in range(8)))
    text_s = time.perf_counter() - t0
    return texts, await music, text_s, time.perf_counter() - t0


def check_serve(runs: dict[str, Path], device: str, timeout: float = 120) -> dict[str, Any]:
    """Serve `runs` ({"music": run, "text": run}) on `device` and send them work; ok / error, seconds, tokens."""
    (first, first_run), *rest = runs.items()
    flags = [arg for name, run in rest for arg in ("--checkpoint", f"{name}={run}")]
    t0 = time.perf_counter()
    proc, port = start(f"{first}={first_run}", *flags, "--device", device, "--compile", "on", "--slots", "8", wait=timeout)
    started = time.perf_counter() - t0
    try:
        texts, music_tokens, text_s, music_s = asyncio.run(asyncio.wait_for(_together(port, timeout), timeout))
    finally:
        code = stop(proc)
    failed = [t for t in texts if t["status"] != 200 or not t["done"]]
    if failed or code != 0:
        raise RuntimeError(f"{len(failed)} of 8 completions failed ({failed[:1]}); the server exited with {code}")
    text_tokens = sum(t["tokens"] for t in texts)
    return {
        "ok": True,
        "listening_after_s": round(started, 2),
        "text": {"requests": 8, "tokens": text_tokens, "seconds": round(text_s, 2), "tokens_per_s": round(text_tokens / text_s, 1)},
        "music": {"samples": 2, "tokens": music_tokens, "seconds": round(music_s, 2), "files": "mid, musicxml, png"},
        "exit_code_after_sigterm": code,
    }
