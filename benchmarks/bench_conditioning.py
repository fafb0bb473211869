"""Does a conditioned model obey its conditions? For every value of a field seen at least --min-count times in
training, sample --samples pieces with `--cond FIELD=VALUE`, read the value back from each sample
(`Modality.condition_values`: music's analysed key and meter, an image's class by a logistic regression
fitted on the training images) and report the share that shows it, next to the share of unconditioned
samples that show it (the baseline), the value's share of the training items, and the ceiling: how often
the same reader finds their own value in the real held-out items (music: in their first --bars bars; a key
read off 8 bars of a real chorale is its whole-piece key 79 % of the time, off 16 bars 97 %).

    python -m benchmarks.bench_conditioning --checkpoint runs/music --field key --samples 16 --bars 8
    python -m benchmarks.bench_conditioning --checkpoint runs/image --field label --samples 50

Prints JSON. Figures are in README's Conditioning section.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import replace

import arseq
from arseq.app.generation import examples, held_out, sample
from arseq.app.planning import make_plan
from arseq.decode import SamplingConfig
from arseq.modalities import Request, SamplingOptions


def draw(loaded, conditions: list[str], n: int, sampling: SamplingOptions, options) -> tuple[list[list[int]], SamplingConfig]:
    """n samples (token sequences) asked for `conditions`, and the sampling settings they were drawn with."""
    if not conditions:
        sampling = replace(sampling, guidance=None)  # nothing to guide towards
    request = Request(n, sampling=sampling, options=options, conditions=conditions)
    planned = make_plan(loaded, request)
    return [s.prompt + s.tokens for s in sample(loaded, planned, batch_size=min(n, 64))], planned.cfg


def first_bars(tok, tokens: list[int], bars: int) -> list[int]:
    """A real piece cut to its first `bars` bars (music), so the ceiling is read on as much music as a sample holds."""
    at = [i for i, t in enumerate(tokens) if t == tok.bar_id]
    return tokens[: at[bars]] if len(at) > bars else tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--field", default="key")
    p.add_argument("--samples", type=int, default=16, help="samples per value (and 2x that unconditioned)")
    p.add_argument("--min-count", type=int, default=10, help="values seen at least this often in training")
    p.add_argument("--bars", type=int, default=8, help="music: bars per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=None, help="default: the modality's (for conditioned samples)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance of the conditioned samples (default: the modality's)")
    args = p.parse_args()
    model = arseq.load(args.checkpoint)
    loaded = model.loaded
    controls = loaded.controls
    if controls is None or args.field not in controls.fields:
        raise SystemExit(f"{args.checkpoint}: not conditioned on {args.field!r}")
    opts = loaded.modality.generate_options
    options = opts(bars=args.bars) if opts is not None and "bars" in opts.__dataclass_fields__ else None
    counts = controls.counts[args.field]
    values = [v for v, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c >= args.min_count]
    if not values:
        raise SystemExit(f"{args.checkpoint}: no {args.field} value was seen {args.min_count} times in training (--min-count)")
    sampling = SamplingOptions(seed=args.seed, temperature=args.temperature, guidance=args.guidance)
    t0 = time.perf_counter()
    train_data, val, _ = held_out(loaded, None)
    reference = examples(controls, train_data.train.items()) if train_data is not None else []
    held = [e for e in examples(controls, val) if args.field in e.conditions]
    crop = (lambda t: first_bars(loaded.tokenizer, t, args.bars)) if options is not None else (lambda t: t)
    groups = {None: draw(loaded, [], 2 * args.samples, sampling, options)[0]}  # unconditioned: the baseline
    for v in values:
        groups[v], cfg = draw(loaded, [f"{args.field}={v}"], args.samples, sampling, options)
    real = [crop(list(e.tokens)) for e in held]
    everything = [seq for seqs in groups.values() for seq in seqs] + real
    shown = iter(loaded.modality.condition_values(loaded.tokenizer, everything, reference))  # one call: one reader fit
    read_of = {v: [r[args.field] for r in (next(shown) for _ in seqs) if args.field in r] for v, seqs in groups.items()}
    agree = [r[args.field] == e.conditions[args.field] for r, e in zip(shown, held) if args.field in r]
    free = Counter(read_of[None])
    free_total = max(1, sum(free.values()))
    rows = {}
    for value in values:
        read = read_of[value]
        rows[value] = {
            "share": sum(r == value for r in read) / max(1, len(read)),
            "read": len(read),
            "misread_as": dict(Counter(r for r in read if r != value).most_common(3)),
            "unconditioned_share": free[value] / free_total,
            "training_items": counts[value],
        }
    shares = [r["share"] for r in rows.values()]
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "field": args.field,
                "samples_per_value": args.samples,
                "bars": args.bars,
                "temperature": cfg.temperature,
                "guidance": cfg.guidance,  # the conditioned samples', as drawn
                "values": rows,
                "mean_share": sum(shares) / max(1, len(shares)),
                "mean_unconditioned_share": sum(r["unconditioned_share"] for r in rows.values()) / max(1, len(rows)),
                "held_out_agreement": sum(agree) / len(agree) if agree else None,
                "held_out_read": len(agree),
                "seconds": round(time.perf_counter() - t0, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
