"""What fill-in-the-middle costs and what it buys, on pairs of models trained with the same config, steps and seed,
without and with `data.fim_rate` (arseq.data.fim).

    python -m benchmarks.bench_fim --pair music runs/music_fim0 runs/music_fim0.5 \
        --pair text runs/text_fim0 runs/text_fim0.5 [--gap 4] [--side 4] [--cuts 4] [--out fim.json]

Per pair, on the held-out split each model's checkpoint names (the data must be on this machine):
- price: left-to-right held-out loss (every token, windows of the context advancing by half of it, as
  `arseq evaluate`) of the FIM model against the model without; target: within 2 %;
- infilling: NLL of true middles (`--gap` units: bars for music, words for text; up to `--side` units of each
  side, cut to fit the context) given both sides (FIM model) against the prefix alone (the model without FIM);
  target: at least 15 % lower. The FIM model given the prefix alone is reported too (same cuts, same tokens).
Prints one JSON object (and writes it atomically to --out).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from arseq.analysis.infill_nll import both_sides, cut_items, prefix_only
from arseq.app.generation import held_out
from arseq.artifacts import checkpoint
from arseq.atomic import atomic_write
from arseq.data.fim import Fim
from arseq.models.scoring import sequence_nll


def ltr_loss(loaded: checkpoint.Loaded, items: list[np.ndarray]) -> float:
    """Mean held-out NLL per token, left to right, as `arseq evaluate` measures it."""
    controls, context = loaded.controls, loaded.model.cfg.max_seq_len
    start = [1 + (controls.width if controls else 0)] * len(items)
    nll, count = sequence_nll(
        loaded.model, items, start=start, pad_id=loaded.tokenizer.pad_id, stride=context // 2, head=controls.head if controls else 0, batch_size=32
    )
    return float(nll.sum() / count.sum())


def units(loaded: checkpoint.Loaded, unit: str) -> Callable[[np.ndarray], np.ndarray]:
    """Unit boundaries of a body of tokens: the modality's FIM cuts (bars, residues...), or words for text."""
    tok, modality = loaded.tokenizer, loaded.modality
    if unit == "word":
        space = np.array([tok.decode([t]).isspace() if t >= 3 else False for t in range(tok.vocab_size)] + [False] * 64)
        return lambda body: np.flatnonzero(space[np.asarray(body[:-1])] & ~space[np.asarray(body[1:])]) + 1
    return lambda body: modality.fim_cuts(tok, np.asarray(body))


def measure(name: str, without: str, with_fim: str, gap: int, side: int, per_item: int, seed: int) -> dict[str, Any]:
    base, fimmed = checkpoint.load(without), checkpoint.load(with_fim)
    fim = Fim.from_dict(fimmed.meta.fim)
    if fim is None or base.meta.fim:
        raise SystemExit(f"--pair {name}: the second checkpoint must be the one trained with data.fim_rate > 0, the first without")
    _, items, where = held_out(fimmed, None)
    t0 = time.perf_counter()
    loss_base, loss_fim = ltr_loss(base, items), ltr_loss(fimmed, items)
    controls = fimmed.controls
    unit = "word" if fimmed.modality.name == "text" else "unit"
    head = 1 + (controls.width if controls else 0)
    heads = [head if len(i) and int(i[0]) == fimmed.tokenizer.bos_id else 0 for i in items]  # a text tail split has no BOS
    cuts = [
        c
        for h in sorted(set(heads))
        for c in cut_items(
            [i for i, k in zip(items, heads) if k == h],
            h,
            units(fimmed, unit),
            gap,
            side,
            np.random.default_rng(seed),
            fimmed.model.cfg.max_seq_len + 1,
            per_item,
        )
    ]
    pad = fimmed.tokenizer.pad_id
    both, n = both_sides(fimmed.model, fim, cuts, pad)
    alone, m = prefix_only(base.model, cuts, pad)
    fim_alone, _ = prefix_only(fimmed.model, cuts, pad)
    return {
        "held_out": where,
        "items": len(items),
        "fim": fim.to_dict(),
        "steps": {"without": _step(without), "with": _step(with_fim)},
        "price": {
            "ltr_loss_without": loss_base,
            "ltr_loss_with": loss_fim,
            "relative": loss_fim / loss_base - 1,
            "target": 0.02,
            "holds": loss_fim / loss_base - 1 <= 0.02,
        },
        "infill": {
            "cuts": len(cuts),
            "gap": f"{gap} {'bars' if fimmed.modality.name == 'music' else unit + 's'}",
            "middle_tokens": n,
            "mean_prefix_tokens": float(np.mean([len(c.prefix) for c in cuts])),
            "mean_suffix_tokens": float(np.mean([len(c.suffix) for c in cuts])),
            "nll_both_sides_fim": both / n,
            "nll_prefix_only_without_fim": alone / m,
            "nll_prefix_only_fim": fim_alone / m,
            "reduction": 1 - both / alone,
            "target": 0.15,
            "holds": 1 - both / alone >= 0.15,
            "perplexity_both_sides": math.exp(both / n),
            "perplexity_prefix_only": math.exp(alone / m),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _step(path: str) -> int | None:
    try:
        return int(checkpoint.load_checkpoint_file(checkpoint.find_checkpoint(Path(path))).get("global_step"))
    except (TypeError, ValueError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--pair",
        nargs=3,
        action="append",
        metavar=("NAME", "WITHOUT", "WITH"),
        required=True,
        help="a name and two checkpoints (or run folders): trained without and with data.fim_rate",
    )
    p.add_argument("--gap", type=int, default=4, help="units in the middle (bars for music, words for text)")
    p.add_argument("--side", type=int, default=4, help="units of context on each side at most (cut to fit the context)")
    p.add_argument("--cuts", type=int, default=4, help="cuts per held-out item (one long text item: x100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {}
    for name, without, with_fim in args.pair:
        per_item = args.cuts * (100 if name == "text" else 1)
        result[name] = measure(name, without, with_fim, args.gap, args.side, per_item, args.seed)
        print(f"{name}: {json.dumps(result[name])}", flush=True)
    text = json.dumps(result, indent=1)
    if args.out:
        atomic_write(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
