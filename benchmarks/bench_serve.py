"""`arseq serve` under load, side by side in one run, on loopback only.

Starts `arseq serve --checkpoint C` on 127.0.0.1 and a bounded asyncio load generator: for 1, 4, 16 and 64
concurrent clients (--clients), each client sends --requests-per-client seeded streaming completions with
budgets drawn from 16..512 tokens, and the run reports tokens/s, requests/s, time to first token and
inter-token latency (p50, p99) and errors. The same 16-client load against `--slots 1` (one request decoding
at a time) gives `sequential_tokens_per_s`. Then 64 clients against `--max-queue 16` (`overload`: every request
completes or gets 429; no 5xx, no stream that ends without [DONE]), held for --soak-seconds while the server's
RSS is sampled (`rss_growth`: at the end over after the first fifth). The engine's step-cost ratio (a step of
16 rows over a step of one, in this process) is reported beside it. `transformers serve`, the anchor, is run
where it is installed (`hf_serve_tokens_per_s`; null and `hf_serve_error` otherwise).

    python benchmarks/bench_serve.py --checkpoint runs/text [--soak-seconds 300] [--clients 1 4 16 64] [--serve-flags=--compile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(checkpoint: str, *flags: str, wait: float = 120) -> tuple[subprocess.Popen, int]:
    """`arseq serve` in a process of its own, once it accepts connections (its models loaded: it listens after)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "arseq", "serve", "--checkpoint", checkpoint, "--host", HOST, "--port", str(port), "--log-level", "warning", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"arseq serve exited: {proc.stderr.read().decode()[-400:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"arseq serve did not start in {wait:.0f} s")


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (`arseq serve` runs its engine in a child process)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) * 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        total += sum(rss_bytes(int(child)) for child in children)
    return total


async def one(port: int, body: dict[str, Any], path: str = "/v1/completions") -> dict[str, Any]:
    """A streaming request: status, tokens, time to first token, gaps between tokens, whether [DONE] came."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    data = json.dumps({**body, "stream": True}).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    out: dict[str, Any] = {"status": status, "tokens": 0, "ttft": None, "gaps": [], "done": False}
    last = None
    if status == 200:
        async for raw in reader:
            line = raw.strip()
            if line.startswith(b"{") or not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                out["done"] = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                out["status"] = chunk["error"]["code"]
                continue
            # arseq sends each chunk's token ids; transformers serve one token's text per chunk
            n = sum(len(c["token_ids"]) if "token_ids" in c else int(bool(c.get("text"))) for c in chunk["choices"])
            out["finished"] = out.get("finished", False) or any(c.get("finish_reason") for c in chunk["choices"])
            if n:
                now = time.perf_counter()
                if last is None:
                    out["ttft"] = now - t0
                else:
                    out["gaps"].append(now - last)
                last = now
                out["tokens"] += n
    writer.close()
    out["seconds"] = time.perf_counter() - t0
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)


async def load(port: int, clients: int, requests_per_client: int, seed: int, prompt: Any, model: str | None = None) -> dict[str, Any]:
    """`clients` concurrent clients, each sending its requests one after another (bounded). With `model` (transformers
    serve), requests name it and carry no seed."""
    rng = random.Random(seed)
    plans = [
        [{"prompt": prompt, "max_tokens": rng.randint(16, 512), "seed": rng.randrange(2**31)} for _ in range(requests_per_client)]
        for _ in range(clients)
    ]
    if model is not None:
        plans = [[{"model": model, "prompt": b["prompt"], "max_tokens": b["max_tokens"]} for b in p] for p in plans]

    async def client(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [await one(port, b) for b in bodies]

    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(client(p) for p in plans)) for r in rs]
    wall = time.perf_counter() - t0
    # arseq's streams must end with [DONE]; transformers serve's end with a finish_reason
    ok = [r for r in results if r["status"] == 200 and (r["done"] or model is not None and r.get("finished"))]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "requests_per_s": round(len(ok) / wall, 3),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p99_s": pct(ttft, 0.99),
        "itl_p50_s": pct(gaps, 0.5),
        "itl_p99_s": pct(gaps, 0.99),
        "errors": len(results) - len(ok),
        "requests": len(results),
        "seconds": round(wall, 2),
    }


async def overload(port: int, pid: int, clients: int, soak: float, prompt: Any) -> dict[str, Any]:
    """`clients` clients sending requests back to back for `soak` seconds; RSS sampled all along."""
    counts = {"completed": 0, "rejected_429": 0, "errors_5xx": 0, "lost_streams": 0, "other": 0}
    rss: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    rng = random.Random(1)

    async def client() -> None:
        while time.perf_counter() - t0 < soak:
            r = await one(port, {"prompt": prompt, "max_tokens": rng.randint(16, 512), "seed": rng.randrange(2**31)})
            if r["status"] == 200:
                counts["completed" if r["done"] else "lost_streams"] += 1
            elif r["status"] == 429:
                counts["rejected_429"] += 1
                await asyncio.sleep(0.2)
            elif r["status"] >= 500:
                counts["errors_5xx"] += 1
            else:
                counts["other"] += 1

    async def sample_rss() -> None:
        while time.perf_counter() - t0 < soak:
            rss.append((time.perf_counter() - t0, rss_bytes(pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sample_rss(), *(client() for _ in range(clients)))
    early = [b for t, b in rss if t >= soak / 5] or [rss[-1][1]]
    return {
        **counts,
        "rss_first_fifth_mb": round(early[0] / 2**20, 1),
        "rss_end_mb": round(rss[-1][1] / 2**20, 1),
        "rss_growth": round(rss[-1][1] / early[0], 3),
    }


def step_cost_ratio(checkpoint: str, compile: str, rows: int = 16, steps: int = 30) -> float | None:
    """Seconds per engine step with `rows` rows decoding over seconds per step with one (this process, one torch
    thread as the server's engine has on 2 cores; compiled as the servers were)."""
    import torch

    from arseq.artifacts import checkpoint as ck
    from arseq.decode import Engine, Row, SamplingConfig

    torch.set_num_threads(1)
    loaded = ck.load(checkpoint)
    loaded.model.eval()
    times = {}
    for n in (1, rows):
        engine = Engine(loaded.model, slots=n, compile=compile, pad_id=loaded.tokenizer.pad_id)
        engine.warm()
        cfg = SamplingConfig(max_new_tokens=10**5, temperature=1.0)
        for i in range(n):
            engine.submit(Row([loaded.tokenizer.bos_id], cfg, seed=i))
        for _ in range(5):
            engine.step()
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        times[n] = (time.perf_counter() - t0) / steps
    return round(times[rows] / times[1], 3)


def hf_folder(checkpoint: str, out: Path) -> None:
    """The model as a Hugging Face folder `transformers serve` can load: `arseq export --format hf`, plus a
    character-level tokenizer.json with arseq's ids (arseq's own ids are no Hugging Face tokenizer)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from arseq.app.export import export_model
    from arseq.artifacts import checkpoint as ck

    loaded = ck.load(checkpoint)
    tok = loaded.tokenizer
    if tok.kind != "char":
        raise RuntimeError(f"a {tok.kind} tokenizer has no Hugging Face twin here (character-level text models only)")
    export_model(loaded, out, "hf", "none")
    vocab = {"<pad>": tok.pad_id, "<s>": tok.bos_id, "</s>": tok.eos_id}
    vocab.update({tok.decode([i]): i for i in range(tok.vocab_size) if i not in vocab.values()})
    hf = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), "isolated")
    hf.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = max(config["max_position_embeddings"], 1024)  # budgets past arseq's window
    (out / "config.json").write_text(json.dumps(config))


def hf_serve(args: argparse.Namespace, prompt: Any, clients: int, per: int, threads: int) -> tuple[float | None, str | None]:
    """The anchor: `transformers serve --continuous-batching` on the same model, the same load (no seeds: it
    takes none per request), with `threads` torch threads (OMP_NUM_THREADS)."""
    import tempfile

    if find_spec("transformers") is None:
        return None, "transformers is not installed (pip install 'transformers[serving]')"
    if not isinstance(prompt, str):
        return None, "needs a text prompt (--prompt) for a character-level text model"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        try:
            hf_folder(args.checkpoint, folder)
        except Exception as e:  # noqa: BLE001
            return None, f"no Hugging Face folder: {e}"
        port = free_port()
        proc = subprocess.Popen(
            [
                "transformers",
                "serve",
                str(folder),
                "--host",
                HOST,
                "--port",
                str(port),
                "--continuous-batching",
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
        try:
            deadline = time.monotonic() + 600
            while True:
                if proc.poll() is not None:
                    return None, "transformers serve exited: " + proc.stderr.read().decode().strip().splitlines()[-1][:300]
                if time.monotonic() > deadline:
                    return None, "transformers serve did not answer /health in 600 s"
                try:
                    with socket.create_connection((HOST, port), timeout=0.5):
                        break
                except OSError:
                    time.sleep(0.5)
            result = asyncio.run(load(port, clients, per, seed=clients, prompt=prompt, model=str(folder)))
            if result["errors"]:
                return None, f"{result['errors']} of {result['requests']} requests failed"
            return result["tokens_per_s"], None
        finally:
            stop(proc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run folder, .ckpt or export")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument(
        "--requests-per-client",
        type=int,
        default=0,
        help="per client per level (default: 16 / clients, at least 8: a level ends with its last long requests decoding beside idle slots, and more requests make that tail a smaller part of it)",
    )
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--soak-seconds", type=float, default=300.0)
    p.add_argument("--prompt", default=None, help="text prompt (text and protein models); default: BOS alone")
    p.add_argument("--serve-flags", default="", help="more flags for every arseq serve started, e.g. --serve-flags='--compile --quantize int8'")
    args = p.parse_args()
    flags = args.serve_flags.split()
    prompt: Any = args.prompt if args.prompt is not None else [0]
    if args.prompt is None:
        from arseq.artifacts import checkpoint as ck

        prompt = [ck.load(args.checkpoint).tokenizer.bos_id]
    per = lambda c: args.requests_per_client or max(8, 16 // c)  # noqa: E731
    out: dict[str, Any] = {"by_clients": {}}
    proc, port = start(args.checkpoint, "--slots", str(args.slots), "--max-queue", "256", *flags)
    try:
        for c in args.clients:
            out["by_clients"][str(c)] = asyncio.run(load(port, c, per(c), seed=c, prompt=prompt))
    finally:
        stop(proc)
    proc, port = start(args.checkpoint, "--slots", "1", "--max-queue", "256", *flags)
    try:
        out["sequential_tokens_per_s"] = asyncio.run(load(port, 16, per(16), seed=16, prompt=prompt))["tokens_per_s"]
    finally:
        stop(proc)
    if "16" in out["by_clients"]:
        out["speedup_16_clients"] = round(out["by_clients"]["16"]["tokens_per_s"] / max(1e-9, out["sequential_tokens_per_s"]), 2)
    compiled = "--compile" in flags and flags[flags.index("--compile") + 1 : flags.index("--compile") + 2] not in (["off"], ["false"])
    out["engine_step_cost_ratio_16_rows"] = step_cost_ratio(args.checkpoint, "on" if compiled else "off")
    # transformers serve at its best: one torch thread (its event loop needs the other core) or one per core
    by_threads = {t: hf_serve(args, prompt, 16, per(16), t) for t in (1, os.cpu_count() or 1)}
    out["hf_serve_by_threads"] = {str(t): r[0] for t, r in by_threads.items()}
    out["hf_serve_tokens_per_s"] = max((r[0] for r in by_threads.values() if r[0]), default=None)
    error = next((r[1] for r in by_threads.values() if r[1]), None)
    if out["hf_serve_tokens_per_s"]:
        out["speedup_vs_hf_serve_16_clients"] = (
            round(out["by_clients"]["16"]["tokens_per_s"] / out["hf_serve_tokens_per_s"], 2) if "16" in out["by_clients"] else None
        )
    if error:
        out["hf_serve_error"] = error
    proc, port = start(args.checkpoint, "--slots", str(args.slots), "--max-queue", "16", *flags)
    try:
        over = asyncio.run(overload(port, proc.pid, 64, args.soak_seconds, prompt))
    finally:
        over["exit_code_after_sigterm"] = stop(proc)
    out["rss_growth"] = over.pop("rss_growth")
    out["overload"] = over
    out["meta"] = {
        "checkpoint": args.checkpoint,
        "slots": args.slots,
        "serve_flags": args.serve_flags,
        "soak_seconds": args.soak_seconds,
        "cpus": os.cpu_count(),
        "requests_per_client": {str(c): per(c) for c in args.clients},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
