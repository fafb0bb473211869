"""Decoding speed with the static KV cache vs recomputing the whole context at every step.

A 6-layer, 384-wide model (vocab 65), greedy, 512 new tokens, batch 1 and batch 8, random weights
(speed does not depend on them). Median of --repeats runs each.

    python benchmarks/bench_generate.py [--device cpu|cuda] [--new-tokens 512] [--repeats 3]
Prints one JSON object: per batch size cached/recompute tokens/s, `kv_cache_speedup` (batch 1, target
>= 5) and `identical_greedy` (cached and recomputed greedy outputs are the same tokens).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from arseq.models import SamplingConfig, Transformer, TransformerConfig, generate


@torch.inference_mode()
def recompute(model: Transformer, prompts: torch.Tensor, new_tokens: int) -> list[list[int]]:
    """The naive loop: a full forward pass over the whole sequence for every new token."""
    seq = prompts
    for _ in range(new_tokens):
        nxt = model(seq)[:, -1].argmax(dim=-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompts.shape[1] :].tolist()


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=65, max_seq_len=args.prompt_tokens + args.new_tokens, n_layer=6, n_head=6, d_model=384)
    model = Transformer(cfg).to(device).eval()
    result: dict = {"device": str(device), "torch_threads": torch.get_num_threads(), "new_tokens": args.new_tokens,
                    "params_m": round(model.num_params() / 1e6, 2)}
    identical = True
    for batch in args.batches:
        prompts = torch.randint(0, 65, (batch, args.prompt_tokens), device=device)
        sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0)
        generate(model, prompts[:, :4].tolist(), SamplingConfig(max_new_tokens=8, temperature=0))  # warm-up
        cached_t, naive_t = [], []
        for _ in range(args.repeats):
            cached, t = timed(lambda: generate(model, prompts.tolist(), sampling).tokens, device)
            cached_t.append(t)
            naive, t = timed(lambda: recompute(model, prompts, args.new_tokens), device)
            naive_t.append(t)
            identical &= cached == naive
        c, n = statistics.median(cached_t), statistics.median(naive_t)
        result[f"batch{batch}"] = {
            "cached_tokens_per_s": round(batch * args.new_tokens / c, 1),
            "recompute_tokens_per_s": round(batch * args.new_tokens / n, 1),
            "speedup": round(n / c, 2),
        }
    result["kv_cache_speedup"] = result[f"batch{args.batches[0]}"]["speedup"]
    result["identical_greedy"] = identical
    print(json.dumps(result))


if __name__ == "__main__":
    main()
