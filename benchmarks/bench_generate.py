"""Decoding speed, side by side in one run: eager, compiled, int8 and int8 + compiled arseq decoding at
batch 1 and 8, Hugging Face `LlamaForCausalLM` of the same shape when transformers is installed (plain,
and with a static cache and torch.compile), and the batch-1 bandwidth limit (float32 weight bytes / the
measured read bandwidth of a buffer of the weights' size).

A 6-layer, 384-wide model (6 heads, SwiGLU 1024, vocab 65, tied embeddings), greedy, --new-tokens new
tokens after a 16-token prompt, random weights (speed does not depend on them). Medians of --repeats.

    python benchmarks/bench_generate.py [--device cpu|cuda] [--new-tokens 256] [--repeats 3]
Prints one JSON object: `limit_tokens_per_s` (batch 1); `batch1` and `batch8`, each holding `eager`,
`compiled`, `int8`, `int8_compiled`, `hf` and `hf_compiled` as {"tokens_per_s", "fraction_of_limit"} (hf: null
without transformers; hf_compiled: null with `hf_compiled_error`, its first line, where it cannot run);
`step_ratio_8_over_1` (8 / batch-8 rate over 1 / batch-1 rate of the compiled arm fastest at batch 1: what a
step of 8 rows costs over a step of 1, loop included; benchmarks/bench_step.py times the step alone);
`identical_greedy_compiled` (compiled greedy == eager greedy, token for token); `meta`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from importlib.util import find_spec

import torch

from arseq.decode import SamplingConfig, generate
from arseq.models import Transformer, TransformerConfig
from arseq.models.quantize import quantize_model, weight_bytes


def bench_config(max_seq_len: int) -> TransformerConfig:
    """The benchmark model: 6 layers, 384 wide, 6 heads, SwiGLU 1024, vocab 65, tied embeddings (bench_step too)."""
    return TransformerConfig(vocab_size=65, max_seq_len=max_seq_len, n_layer=6, n_head=6, d_model=384, mlp_hidden=1024)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def read_bandwidth(device: torch.device, nbytes: int, repeats: int = 15) -> float:
    """Bytes/s of summing a float32 buffer of `nbytes`, the weights' size (median): a decode step reads its
    weights once, in order, and so does this; a buffer that fits the last-level cache stays there between
    reads, as the weights do (a 512 MB buffer, as this used to read, says nothing about 42.6 MB in a 480 MB L3)."""
    x = torch.ones(max(nbytes // 4, 1), device=device)
    x.sum()
    times = [timed(lambda: x.sum(), device)[1] for _ in range(repeats)]
    return x.numel() * 4 / statistics.median(times)


def hf_model(cfg: TransformerConfig, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    return LlamaForCausalLM(hf_cfg).to(device).eval()


def hf_generate(model, prompts: torch.Tensor, new_tokens: int, compiled: bool = False) -> list[list[int]]:
    """Greedy `generate`; `compiled`: transformers' best configuration, a static cache with the forward
    through torch.compile (which transformers enables by itself only on GPUs)."""
    options: dict = {}
    if compiled:
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=True, dynamic=False)
        config._compile_all_devices = True  # a class attribute, not an argument (transformers 5.25)
        options = {"cache_implementation": "static", "compile_config": config}
    with torch.inference_mode():
        out = model.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **options
        )
    return out[:, prompts.shape[1] :].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers arm")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = bench_config(args.prompt_tokens + args.new_tokens)
    model = Transformer(cfg).to(device).eval()
    int8 = quantize_model(copy.deepcopy(model), "int8")
    bandwidth = read_bandwidth(device, weight_bytes(model))
    limit = bandwidth / weight_bytes(model)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0)
    arms = {"eager": (model, False), "compiled": (model, True), "int8": (int8, False), "int8_compiled": (int8, True)}
    hf = hf_model(cfg, device) if find_spec("transformers") and not args.no_hf else None
    result: dict = {"limit_tokens_per_s": round(limit, 1)}
    identical = True
    for batch in (1, 8):
        prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_tokens), device=device)
        outputs, row = {}, {}
        for name, (m, compile) in arms.items():

            def run(m=m, compile=compile, prompts=prompts):
                return generate(m, prompts.tolist(), sampling, compile=compile).tokens

            run()  # warm-up (compiles the step for this batch and cache length)
            times = []
            for _ in range(args.repeats):
                outputs[name], t = timed(run, device)
                times.append(t)
            row[name] = batch * args.new_tokens / statistics.median(times)
            print(f"batch {batch} {name}: {row[name]:.1f} tokens/s", file=sys.stderr, flush=True)
        for name, compiled in (("hf", False), ("hf_compiled", True)) if hf is not None else ():
            try:
                hf_generate(hf, prompts, args.new_tokens if compiled else 8, compiled)  # warm-up (compiles)
                times = [timed(lambda p=prompts, c=compiled: hf_generate(hf, p, args.new_tokens, c), device)[1] for _ in range(args.repeats)]
                row[name] = batch * args.new_tokens / statistics.median(times)
            except Exception as e:  # noqa: BLE001 - transformers' compiled path on this device/version: report why
                result[f"{name}_error"] = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            print(f"batch {batch} {name}: {row.get(name, float('nan')):.1f} tokens/s", file=sys.stderr, flush=True)
        identical &= outputs["compiled"] == outputs["eager"]
        result[f"batch{batch}"] = {
            name: None if name not in row else {"tokens_per_s": round(row[name], 1), "fraction_of_limit": round(row[name] / limit, 3)}
            for name in (*arms, "hf", "hf_compiled")
        }
        best_hf = max((row[n] for n in ("hf", "hf_compiled") if n in row), default=None)
        result.setdefault("meta", {})[f"batch{batch}_vs_hf"] = {name: round(row[name] / best_hf, 2) for name in arms} if best_hf else None
        result["meta"][f"batch{batch}_tokens_per_s"] = row
    # A step of 8 rows over a step of 1, from the decoding rates of the compiled arm fastest at batch 1.
    rates = {b: result["meta"].pop(f"batch{b}_tokens_per_s") for b in (1, 8)}
    best = max(("compiled", "int8_compiled"), key=lambda n: rates[1][n])
    result["step_ratio_8_over_1"] = round(8 * rates[1][best] / rates[8][best], 2)
    result["meta"]["step_ratio_arm"] = best
    result["identical_greedy_compiled"] = identical
    result["meta"].update(
        device=str(device),
        torch_threads=torch.get_num_threads(),
        new_tokens=args.new_tokens,
        weight_mb_float32=round(weight_bytes(model) / 1e6, 1),
        weight_mb_int8=round(weight_bytes(int8) / 1e6, 1),
        read_gb_per_s=round(bandwidth / 1e9, 1),
        repeats=args.repeats,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
