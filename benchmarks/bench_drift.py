"""Speed of the teacher-forced part of `arseq analyze drift`: N items x P positions, every kind of injected
error, K offsets, on a trained checkpoint (the Bach model of configs/music/bach_chorales.yaml).

    python -m benchmarks.bench_drift --checkpoint runs/music [--items 200] [--positions 8] [--offsets 32] [--repeats 3]
        [--threads 1] [--divergence]
Prints one JSON object: the median seconds of --repeats runs (target: under a minute on 2 CPU cores for
200 x 8), sites per second, and the per-run seconds. The shared prefix of every site runs once into the KV
cache; each kind then costs K tokens (and K greedy steps for the divergence curve).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from arseq.analysis import drift as tf
from arseq.app import generation
from arseq.artifacts import checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--positions", type=int, default=8)
    p.add_argument("--offsets", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is much faster on a loaded machine)")
    p.add_argument(
        "--split",
        choices=("val", "train"),
        default="val",
        help="items to inject into; the Bach validation split has only 35 chorales (~90 pieces): use train for N=200",
    )
    p.add_argument("--divergence", action="store_true", help="also time the greedy divergence curve (K sequential steps per kind)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = checkpoint.load(args.checkpoint)
    loaded.model.to(torch.device(args.device))
    train, items, where = generation.held_out(loaded, None)
    if args.split == "train":
        items, where = train.train.items(), "training split"
    tok = loaded.tokenizer
    times, sites = [], []
    for r in range(args.repeats):
        rng = np.random.default_rng(r)
        sites = tf.choose_sites(items, args.items, args.positions, args.offsets, loaded.model.cfg.max_seq_len, rng)
        t0 = time.perf_counter()
        tf.measure(
            loaded.model,
            items,
            sites,
            args.offsets,
            specials=(tok.pad_id, tok.bos_id, tok.eos_id),
            mistake=lambda x, i, g: loaded.modality.plausible_mistake(tok, x, i, g),
            batch_size=args.batch_size,
            seed=r,
            diverge=args.divergence,
        )
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(
        json.dumps(
            {
                "data": where,
                "items": len(items),
                "sites": len(sites),
                "offsets": args.offsets,
                "kinds": list(tf.KINDS),
                "divergence": args.divergence,
                "context": loaded.model.cfg.max_seq_len,
                "threads": torch.get_num_threads(),
                "median_seconds": round(median, 2),
                "sites_per_second": round(len(sites) / median, 1),
                "runs_seconds": [round(t, 2) for t in times],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
