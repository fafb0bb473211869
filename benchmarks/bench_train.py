"""Training throughput through arseq's LightningModule + Trainer vs a bare PyTorch loop.

Same model, same batches (random windows of one token stream), same AdamW + schedule, same gradient
clipping; the first steps of each run are warm-up and not timed. Runs alternate and repeat; medians.

    python benchmarks/bench_train.py [--steps 200] [--repeats 3] [--data FILE] [--optim adamw|muon]
                                     [--block 64] [--batch 12] [--compile]
Prints one JSON object: arseq_tokens_per_s, bare_tokens_per_s, ratio (target >= 0.95); with --compile
also arseq_compiled_tokens_per_s (arseq's `compile: true`) and compile_speedup over arseq eager.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arseq.data.loader import train_loader
from arseq.models.transformer import Transformer, TransformerConfig
from arseq.train.optim import OptimConfig, lr_factor, make_optimizer

# nanoGPT's CPU "baby GPT" (configs/text/shakespeare_char_cpu.yaml)
MODEL = dict(n_layer=4, n_head=4, d_model=128, dropout=0.0)
VOCAB = 68


def token_file(data: Path | None, directory: Path) -> Path:
    if data is not None and data.exists():
        text = data.read_text(encoding="utf-8")
        chars = sorted(set(text))
        lut = {c: i + 3 for i, c in enumerate(chars)}
        tokens = np.array([lut[c] for c in text], dtype=np.uint16)
    else:
        tokens = np.random.default_rng(0).integers(3, VOCAB, size=1_000_000, dtype=np.uint16)
    path = directory / "train.npy"
    np.save(path, tokens)
    return path


def bare(path: Path, steps: int, warmup: int, seed: int, optim: str, block: int, batch: int) -> float:
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=VOCAB, max_seq_len=block, **MODEL))
    optim_cfg = OptimConfig(name=optim)
    opt = make_optimizer(model, optim_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, optim_cfg, steps))
    batches = iter(train_loader(path, block, batch, seed, None, 0))
    model.train()
    for step in range(steps):
        if step == warmup:
            t0 = time.perf_counter()
        x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (steps - warmup) * block * batch / (time.perf_counter() - t0)


def through_arseq(path: Path, steps: int, warmup: int, seed: int, optim: str, block: int, batch: int, compile: bool = False) -> float:
    import lightning as L

    from arseq.train.module import ARModule

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, module):
            self.t1 = time.perf_counter()

    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=VOCAB, max_seq_len=block, **MODEL)
    module = ARModule(asdict(cfg), asdict(OptimConfig(name=optim)), compile=compile)
    clock = Clock()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[clock],
        log_every_n_steps=50,
    )
    trainer.fit(module, train_dataloaders=train_loader(path, block, batch, seed, None, 0))
    return (steps - warmup) * block * batch / (clock.t1 - clock.t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--optim", choices=["adamw", "muon"], default="adamw")
    p.add_argument("--block", type=int, default=64, help="64 x 12: nanoGPT's baby GPT; 128 x 16: the protein config")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--compile", action="store_true", help="add an arm: arseq with compile: true")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data/tinyshakespeare.txt")
    args = p.parse_args()
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = token_file(args.data, Path(tmp))
        shape = (args.block, args.batch)
        runs: dict[str, list[float]] = {"arseq": [], "bare": []} | ({"arseq_compiled": []} if args.compile else {})
        for r in range(args.repeats):
            runs["bare"].append(bare(path, args.steps, args.warmup, r, args.optim, *shape))
            runs["arseq"].append(through_arseq(path, args.steps, args.warmup, r, args.optim, *shape))
            if args.compile:
                runs["arseq_compiled"].append(through_arseq(path, args.steps, args.warmup, r, args.optim, *shape, compile=True))
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "model": MODEL,
        "optim": args.optim,
        "block_size": args.block,
        "batch_size": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "arseq_tokens_per_s": round(med["arseq"]),
        "bare_tokens_per_s": round(med["bare"]),
        "ratio": round(med["arseq"] / med["bare"], 3),
    }
    if args.compile:
        result |= {"arseq_compiled_tokens_per_s": round(med["arseq_compiled"]), "compile_speedup": round(med["arseq_compiled"] / med["arseq"], 3)}
    print(json.dumps(result | {"runs": {k: [round(v) for v in vs] for k, vs in runs.items()}}))


if __name__ == "__main__":
    main()
