"""The cost of one compiled decode step per linear-layer route, side by side in one process: the model of
bench_generate (6 x 384, vocab 65) in float32 and int8, steps of 1, 2, 4 and 8 rows and one row of
speculative decoding's 5-token verify pass, each route of arseq.models.linear forced in turn and the rule.
Rows sit at position 100 of a --cache-len cache; attention reads the span the decode engine picks for them
(`bucket`: arseq.decode.slots.spans) or, with `--spans full,bucket`, also the whole cache (`full`, as
before spans), so that the two are timed interleaved.

Every (weights, route, shape) is compiled once (Inductor, C++ wrapper, as the decode loops compile it);
then the arms are timed interleaved, `--calls` calls each per round for `--rounds` rounds, and reported
as medians, so that a load that comes and goes hits every arm alike. Alongside: the machine's measured
FMA peak (a large float32 matmul, best of several) and the read bandwidth of a buffer of the weights'
size summed the way the step reads its weights (once per step, in order; cache-resident where it fits L3).

    python benchmarks/bench_step.py [--rows 1,2,4,8] [--verify 5] [--rounds 10] [--threads N] [--arms float32:reduce,...]
Prints one JSON object: `step_ratio_8_over_1` (the rule's arm with the fastest 1-row step),
`rule` (per weights: ms per shape, the route the rule took, ratio), `routes` (per weights and route:
`ms` per shape, `step_ratio_8_over_1`, `gflops_at_8`, `bytes_per_s_at_1`, `fraction_of_read_bandwidth_at_1`),
all for the first of --spans; `span` (the slots read per shape, for each of --spans); `other_spans` (the
same fields for the other spans); `peak_gflops`, `read_gb_per_s`, `meta` (CPU features, threads, spread).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import itertools
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from arseq.models import Transformer, TransformerConfig, cpu_features
from arseq.models.linear import ROUTES, forced_route, rule_route
from arseq.models.quantize import quantize_model, weight_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import bench_config, read_bandwidth  # noqa: E402  (the same model and bandwidth probe)

NEW_API = "pos" in inspect.signature(Transformer.forward).parameters
SPAN_API = "span" in inspect.signature(Transformer.forward).parameters


def step(model: Transformer, tokens: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
    """One cached pass of tokens (B, T) at positions pos (B, T), as a decode loop makes it: logits (B, T, V)."""
    if SPAN_API:
        return model(tokens, pos=pos, span=span)
    if NEW_API:
        return model(tokens, pos=pos)
    return model(tokens, input_pos=pos[0])  # before per-row positions: one slot for every row


def span_of(name: str, reach: int, cache_len: int) -> int:
    """The slots a step whose rows reach `reach` reads: the whole cache (`full`) or the engine's span (`bucket`)."""
    if name == "full" or not SPAN_API:
        return cache_len
    from arseq.decode.slots import spans

    return next(s for s in spans(cache_len) if s >= reach)


def compiled_step() -> Callable[..., torch.Tensor]:
    # A fresh code object per arm: its own graph, traced under its own route (torch.compile keys graphs by code).
    fn = types.FunctionType(step.__code__.replace(), step.__globals__, "step")
    return torch.compile(fn, dynamic=False, fullgraph=True, options={"cpp_wrapper": True})


def peak_gflops(device: torch.device, n: int = 1024, repeats: int = 9) -> float:
    """The FMA peak as the best large float32 matmul does it (MKL sgemm: ~90 % of the units' rate)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def matmul_params(cfg: TransformerConfig) -> int:
    """Multiply-adds per token of the linear layers (lm_head included, the embedding lookup not)."""
    d, h = cfg.d_model, cfg.mlp_hidden
    return cfg.n_layer * (3 * d * d + d * d + 2 * h * d + h * d) + cfg.vocab_size * d


class Arm:
    """One (weights, route, (rows, tokens), span) step: compiled under its route, with its own KV cache."""

    def __init__(self, model: Transformer, route: str | None, shape: tuple[int, int], cache_len: int, span: str, device: torch.device):
        (rows, tokens), self.model, self.route, self.device = shape, model, route, device
        self.fn = compiled_step()
        self.tokens = torch.randint(0, model.cfg.vocab_size, (rows, tokens), device=device)
        start = min(100, cache_len // 2)  # a slot well inside the cache, as mid-generation
        self.pos = (start + torch.arange(tokens, device=device)).expand(rows, tokens).contiguous()
        self.span = span_of(span, start + tokens, cache_len)
        self.caches = model.setup_cache(rows, cache_len)
        self.times: list[float] = []
        self.call()  # compiles

    def call(self) -> float:
        self.model.setup_cache(self.tokens.shape[0], self.caches[0].k.shape[2], self.caches)
        with torch.no_grad(), forced_route(self.route):  # the route the graph was traced with: no recompiles
            return _timed(lambda: self.fn(self.model, self.tokens, self.pos, self.span), self.device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", default="1,2,4,8")
    p.add_argument("--verify", type=int, default=5, help="tokens of the verify pass (one row); 0: none")
    p.add_argument(
        "--arms",
        default="float32:reduce,float32:blas,int8:reduce,int8:fbgemm_int8",
        help=f"weights:route pairs to compare; weights float32 or int8, route one of {', '.join(ROUTES)} "
        "(int8:blas dequantizes every weight every step: add it to see)",
    )
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=3, help="timed calls per arm per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--cache-len", type=int, default=272)
    p.add_argument("--spans", default="bucket", help="slots attention reads, one or both of bucket (the engine's span), full (the whole cache)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = bench_config(args.cache_len)
    base = Transformer(cfg).to(device).eval()
    models = {"float32": base, "int8": quantize_model(copy.deepcopy(base), "int8")}
    pairs = [tuple(a.split(":", 1)) for a in args.arms.split(",") if a]
    models = {k: v for k, v in models.items() if any(w == k for w, _ in pairs)}
    shapes = {f"rows{r}": (int(r), 1) for r in args.rows.split(",")}
    if args.verify:
        shapes[f"verify{args.verify}"] = (1, args.verify)
    routes = list(dict.fromkeys(r for _, r in pairs))
    span_names = [n for n in args.spans.split(",") if n]
    arms: dict[tuple[str, str, str, str], Arm] = {}
    for weights, route in pairs:
        if route == "fbgemm_int8" and (weights != "int8" or device.type != "cpu" or not cpu_features.fbgemm_int8()):
            continue
        for (shape, rows_tokens), span in itertools.product(shapes.items(), span_names):
            t0 = time.perf_counter()
            arms[weights, route, shape, span] = Arm(models[weights], route, rows_tokens, args.cache_len, span, device)
            print(f"compiled {weights} {route} {shape} span {span} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    peak = peak_gflops(device)
    bandwidth = {w: read_bandwidth(device, weight_bytes(m)) for w, m in models.items()}
    for _ in range(args.rounds):
        for arm in arms.values():
            arm.times.extend(arm.call() for _ in range(args.calls))
    ms = {key: statistics.median(arm.times) * 1e3 for key, arm in arms.items()}
    spread = {key: (statistics.quantiles(arm.times, n=4)[2] - statistics.quantiles(arm.times, n=4)[0]) * 1e3 / ms[key] for key, arm in arms.items()}
    macs = matmul_params(cfg)

    def summary(times: dict[str, float], weights: str) -> dict:
        out: dict = {"ms": {s: round(t, 3) for s, t in times.items()}}
        if "rows1" in times and "rows8" in times:
            out["step_ratio_8_over_1"] = round(times["rows8"] / times["rows1"], 2)
            out["gflops_at_8"] = round(2 * macs * 8 / (times["rows8"] / 1e3) / 1e9, 1)
            out["bytes_per_s_at_1"] = round(weight_bytes(models[weights]) / (times["rows1"] / 1e3) / 1e9, 2)
            out["fraction_of_read_bandwidth_at_1"] = round(out["bytes_per_s_at_1"] * 1e9 / bandwidth[weights], 2)
        if f"verify{args.verify}" in times and "rows1" in times:
            out["verify_over_1"] = round(times[f"verify{args.verify}"] / times["rows1"], 2)
        return out

    def of_span(span: str) -> dict:
        result: dict = {"routes": {}, "rule": {}}
        for weights in models:
            by_route = {r: {s: ms[weights, r, s, span] for s in shapes if (weights, r, s, span) in ms} for r in routes}
            result["routes"][weights] = {r: summary(t, weights) for r, t in by_route.items() if t}
            taken = {
                s: rule_route(device.type, models[weights].blocks[0].mlp.down.weight.dtype, weights == "int8", rows * tokens, True)
                for s, (rows, tokens) in shapes.items()
            }
            if all(by_route.get(taken[s], {}).get(s) is not None for s in shapes):
                result["rule"][weights] = {**summary({s: by_route[taken[s]][s] for s in shapes}, weights), "route": taken}
        fastest = min(result["rule"], key=lambda w: result["rule"][w]["ms"].get("rows1", float("inf")), default=None)
        result["step_ratio_8_over_1"] = result["rule"][fastest].get("step_ratio_8_over_1") if fastest else None
        result["best_arm"] = fastest
        return result

    result = of_span(span_names[0])
    result["span"] = {n: {s: next(a.span for k, a in arms.items() if k[2:] == (s, n)) for s in shapes} for n in span_names}
    result["other_spans"] = {n: of_span(n) for n in span_names[1:]}
    result["peak_gflops"] = round(peak, 1)
    result["read_gb_per_s"] = {w: round(b / 1e9, 1) for w, b in bandwidth.items()}
    result["meta"] = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_features.describe(),
        "weight_mb": {w: round(weight_bytes(m) / 1e6, 1) for w, m in models.items()},
        "rounds": args.rounds,
        "calls": args.calls,
        "median_interquartile_spread": round(statistics.median(spread.values()), 2) if spread else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
