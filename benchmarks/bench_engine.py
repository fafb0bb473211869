"""Continuous batching vs static batches on the decode engine (arseq.decode.engine).

A mixed workload: `--requests` requests (default 64) with new-token budgets drawn from 16..512 (seeded), no
stop token (each request decodes exactly its budget), sampled (temperature 1, top-p 0.95, one seed per
request). Two arms on the same engine, same model, same seeds, `--slots` rows per step (default 8):
- continuous: every request submitted at once; a request joins as soon as a slot frees;
- static: requests in batches of `--slots`, each batch decoded until its longest row ends (finished rows'
  slots idle until the batch is done), as a call-shaped sampler does.
The ideal gain of continuous batching is (sum over static batches of slots x their longest budget) / (sum of
all budgets): the steps a static batch spends on rows that already ended. `gain` is the measured ratio of
useful tokens/s (prefill included). `identical`: every request's tokens equal those it gets decoded alone.
Shared machines are noisy (the same arm has ranged 25-34 s on one host), so the arms run `--rounds` times,
alternating (which arm goes first alternates too); `gain` is the median of the rounds' ratios, each arm's
seconds the median of its rounds.

    python -m benchmarks.bench_engine [--requests 64] [--slots 8] [--rounds 3] [--compile on]

Prints one JSON object: ideal_gain, gain, gain_over_ideal, identical, tokens, and per arm seconds (median and
every round's) and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from arseq.decode import Engine, Row, SamplingConfig
from arseq.models import Transformer
from benchmarks.bench_generate import bench_config


def workload(n: int, seed: int = 0) -> list[Row]:
    rnd = random.Random(seed)
    return [
        Row([1 + rnd.randrange(60) for _ in range(8)], SamplingConfig(max_new_tokens=rnd.randint(16, 512), temperature=1.0, top_p=0.95), seed=i)
        for i in range(n)
    ]


def serve(model: Transformer, rows: list[Row], slots: int, length: int, compile: str, batch: int | None) -> tuple[dict[int, list[int]], float]:
    """Decode `rows` (all at once, or in static batches of `batch` run to their longest); tokens per row, seconds."""
    engine = Engine(model, slots, length=length, compile=compile)
    out: dict[int, list[int]] = {}
    try:
        engine.submit(Row([1, 2], SamplingConfig(max_new_tokens=4)))  # warm-up: compiles before the clock starts
        engine.run()
        t0 = time.perf_counter()
        groups = [rows] if batch is None else [rows[i : i + batch] for i in range(0, len(rows), batch)]
        for group in groups:
            ids = {engine.submit(r): i for i, r in zip(range(len(out), len(out) + len(group)), group)}
            for f in engine.run():
                out[ids[f.id]] = f.tokens
        return out, time.perf_counter() - t0
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both arms, alternating (medians are reported)")
    ap.add_argument("--compile", default="off", choices=["off", "on", "auto"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-alone", action="store_true", help="skip decoding each request alone (the identity check)")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    length = 8 + 512 + 1
    model = Transformer(bench_config(length)).to(args.device).eval()
    rows = workload(args.requests)
    budgets = [r.cfg.max_new_tokens for r in rows]
    S = args.slots
    ideal = sum(S * max(budgets[i : i + S]) for i in range(0, len(budgets), S)) / sum(budgets)
    arms: dict[str, tuple[int | None, list[float]]] = {"continuous": (None, []), "static": (S, [])}
    outputs: list[dict[int, list[int]]] = []
    for r in range(args.rounds):
        for name in sorted(arms, reverse=r % 2 == 1):
            batch, seconds = arms[name]
            out, t = serve(model, rows, S, length, args.compile, batch)
            outputs.append(out)
            seconds.append(t)
    identical = None
    if not args.skip_alone:
        alone = {i: serve(model, [r], S, length, args.compile, None)[0][0] for i, r in enumerate(rows)}
        identical = all(out == alone for out in outputs)
    tokens = sum(len(t) for t in outputs[0].values())
    assert tokens == sum(budgets), "a request did not decode its whole budget"
    t_cont, t_static = (statistics.median(arms[a][1]) for a in ("continuous", "static"))
    gain = statistics.median(s / c for c, s in zip(arms["continuous"][1], arms["static"][1]))

    def arm(name: str, t: float) -> dict:
        return {"seconds": round(t, 2), "tokens_per_s": round(tokens / t, 1), "rounds": [round(x, 2) for x in arms[name][1]]}

    print(
        json.dumps(
            {
                "requests": len(rows),
                "slots": S,
                "compile": args.compile,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "tokens": tokens,
                "ideal_gain": round(ideal, 3),
                "gain": round(gain, 3),
                "gain_over_ideal": round(gain / ideal, 3),
                "identical": identical,
                "rounds": args.rounds,
                "continuous": arm("continuous", t_cont),
                "static": arm("static", t_static),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
