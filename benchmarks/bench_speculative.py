"""Speculative decoding speed, side by side in one run: plain vs --draft MODEL vs --draft ngram, batch 1,
greedy and at temperature 0.8, for text (tiny Shakespeare) and music (Bach chorales, grammar constraint on).

Targets and drafts are the shipped configs (configs/text/shakespeare_char_cpu.yaml and
configs/music/bach_chorales.yaml, with their *_draft.yaml overlays), trained briefly here unless given;
a larger text target (8 layers x 384) shows how the speed-up grows with the target's cost.

    python benchmarks/bench_speculative.py [--text-target CKPT --text-draft CKPT --music-target CKPT
        --music-draft CKPT --big-target CKPT] [--work DIR] [--steps 1500] [--new-tokens 256] [--repeats 5]

Arms are interleaved (plain, draft, ngram, plain, ...) so that load on a shared machine hits all alike;
figures are medians of --repeats (sampled arms: seed = repeat). Each arm runs eagerly and, unless
--no-compile, compiled as well (`*_compiled`: plain's decode step, both models' speculative passes), each
speculative arm compared with plain decoding of the same kind. Prints one JSON object: per modality and
temperature the arms' tokens/s, speed-ups, acceptance rates and tokens per target pass, and whether greedy
outputs were identical to plain eager decoding's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from arseq.api import load
from arseq.app.planning import make_plan
from arseq.decode import DraftModel, NGram, Speculative, generate

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
CONFIGS = {"text": "configs/text/shakespeare_char_cpu.yaml", "music": "configs/music/bach_chorales.yaml"}


def train(name: str, draft: bool, work: Path, steps: int, extra: list[str] = ()) -> str:
    """Train the shipped config (or its draft overlay) for `steps`; return the run folder."""
    from arseq.cli import main

    config = ROOT / CONFIGS[name]
    root = work / f"{name}_{'draft' if draft else 'target'}{'_' + '_'.join(extra[1::2]) if extra else ''}"
    argv = ["train", "--config", str(config)]
    if draft:
        argv += ["--config", str(config.with_name(config.stem + "_draft.yaml"))]
    if name == "text":
        argv += ["--data.paths", str(SHAKESPEARE)]
    argv += ["--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false", *extra]
    if not any(root.rglob("last.ckpt")):
        assert main(argv) == 0
    return str(sorted(root.rglob("version_*"))[-1])


def arm_runner(model, name: str, temperature: float, new_tokens: int, draft_model, k: int):
    """Closures generating one sample at batch 1 with the modality's prompt and constraint."""
    loaded = model.loaded
    call = model._call(
        "generate", {"temperature": temperature, "max_new_tokens": new_tokens, "seed": 0, "prompt": "ROMEO:\n" if name == "text" else None}
    )
    planned = make_plan(loaded, call.request)
    tok, prompts, cfg = loaded.tokenizer, planned.prompts[:1], planned.cfg

    def run(arm: str, seed: int):
        arm, compiled = arm.removesuffix("_compiled"), arm.endswith("_compiled")
        c = cfg if temperature == 0 else replace(cfg, seed=seed)
        constraint = planned.constraint() if planned.constraint is not None else None
        t0 = time.perf_counter()
        if arm == "plain":
            gen, stats = generate(loaded.model, prompts, c, pad_id=tok.pad_id, constraint=constraint, compile=compiled), None
        else:
            proposer = DraftModel(draft_model) if arm == "draft" else NGram()
            gen = generate(loaded.model, prompts, c, pad_id=tok.pad_id, constraint=constraint, compile=compiled, speculative=Speculative(proposer, k))
            stats = gen.stats
        seconds = time.perf_counter() - t0
        return gen.tokens[0], len(gen.tokens[0]) + gen.stopped[0], seconds, stats

    return run


def measure(target: str, draft: str, name: str, temperature: float, args) -> dict:
    model, draft_model = load(target), load(draft).loaded.model
    assert model.loaded.tokenizer.to_dict() == load(draft).loaded.tokenizer.to_dict()
    run = arm_runner(model, name, temperature, args.new_tokens, draft_model, args.draft_tokens)
    arms = ["plain", "draft", "ngram"]
    arms += [] if args.no_compile else [f"{a}_compiled" for a in arms]
    for arm in arms:
        run(arm, 0)  # warm-up (and compiling)
    spec = [a for a in arms if not a.startswith("plain")]
    rates: dict[str, list[float]] = {a: [] for a in arms}
    accept: dict[str, list[float]] = {a: [] for a in spec}
    per_pass: dict[str, list[float]] = {a: [] for a in spec}
    outputs: dict[str, list] = {a: [] for a in arms}
    for r in range(args.repeats):
        for arm in arms:
            tokens, count, seconds, stats = run(arm, r)
            rates[arm].append(count / seconds)
            outputs[arm].append(tokens)
            if stats is not None:
                accept[arm].append(stats.accepted / max(1, stats.proposed))
                per_pass[arm].append(stats.tokens / max(1, stats.target_passes))
    med = {a: statistics.median(v) for a, v in rates.items()}
    out = {
        "tokens_per_s": {a: round(v, 1) for a, v in med.items()},
        "speedup": {a: round(med[a] / med["plain_compiled" if a.endswith("_compiled") else "plain"], 3) for a in spec},  # over plain of the same kind
        "acceptance_rate": {a: round(statistics.median(v), 3) for a, v in accept.items()},
        "tokens_per_target_pass": {a: round(statistics.median(v), 2) for a, v in per_pass.items()},
        "mean_new_tokens": round(statistics.mean(len(t) for t in outputs["plain"]), 1),
    }
    if temperature == 0:
        out["identical_to_plain"] = all(outputs[a] == outputs["plain"] for a in arms[1:])
    print(f"{name} T={temperature}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key in ("text-target", "text-draft", "music-target", "music-draft", "big-target"):
        p.add_argument(f"--{key}", default=None, help="checkpoint/run folder (default: train one under --work)")
    p.add_argument("--work", type=Path, default=Path("runs/bench_speculative"))
    p.add_argument("--steps", type=int, default=1500, help="training steps of models trained here")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--draft-tokens", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-big", action="store_true", help="skip the 8 x 384 text target")
    p.add_argument("--no-compile", action="store_true", help="eager arms only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths = {
        "text": (args.text_target or train("text", False, args.work, args.steps), args.text_draft or train("text", True, args.work, args.steps)),
        "music": (args.music_target or train("music", False, args.work, args.steps), args.music_draft or train("music", True, args.work, args.steps)),
    }
    result: dict = {}
    for name, (target, draft) in paths.items():
        result[name] = {f"temperature_{t}": measure(target, draft, name, t, args) for t in (0.0, 0.8)}
        result[name]["target"], result[name]["draft"] = target, draft
    if not args.skip_big:
        big = args.big_target or train(
            "text", False, args.work, args.steps // 3, ["--model.n_layer", "8", "--model.d_model", "384", "--model.n_head", "6"]
        )
        result["text_8x384"] = {"temperature_0.0": measure(big, paths["text"][1], "text", 0.0, args), "target": big}
    result["meta"] = {
        "torch_threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens,
        "draft_tokens": args.draft_tokens,
        "repeats": args.repeats,
        "batch": 1,
        "device": "cpu",
        "compiled_arms": not args.no_compile,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
