"""Does a conditioned model use its conditions? Measured on held-out items that have a value:

- perplexity with the true value against perplexity with the field's unknown token (must be lower), and
- classification by likelihood: the value v maximising p(item | v), against the majority-class baseline
  (the most common training value), as accuracy and macro-F1.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from arseq.conditioning import Controls
from arseq.models.scoring import TokenSeqs, sequence_nll
from arseq.models.transformer import Transformer

MAX_ITEMS = 300  # classification scores every item once per value: a seeded sample keeps it to minutes


def condition_report(
    model: Transformer, controls: Controls, items: TokenSeqs, batch_size: int, pad_id: int, stride: int, seed: int = 0
) -> dict[str, Any]:
    """Per field: perplexity with the true and the unknown value, and likelihood classification."""
    from sklearn.metrics import f1_score
    from tqdm import tqdm

    start = 1 + controls.width  # score the item's own tokens, not the control tokens
    report: dict[str, Any] = {}
    # every held-out item is scored 2 + (number of values) times per field: minutes on long music
    bar = tqdm(total=sum(2 + len(v) for v in controls.fields.values()), desc="scoring conditions", unit="pass", leave=False, disable=None)
    for slot, (name, values) in enumerate(controls.fields.items()):
        unknown = controls.unknown_id(name)
        known = [list(map(int, it)) for it in items if len(it) > start and int(it[1 + slot]) != unknown]
        if not known:
            report[name] = {"items": 0}
            bar.update(2 + len(values))
            continue
        if len(known) > MAX_ITEMS:
            chosen = np.random.default_rng(seed).choice(len(known), MAX_ITEMS, replace=False)
            known = [known[i] for i in sorted(chosen)]

        def with_value(token: int) -> list[list[int]]:
            return [it[: 1 + slot] + [token] + it[2 + slot :] for it in known]  # noqa: B023  (called in this iteration)

        def nll(token: int | None) -> tuple[np.ndarray, int]:
            """Per item summed NLL of its tokens after the control tokens (with `token` as the value), and their count."""
            rows = known if token is None else with_value(token)  # noqa: B023  (called in this iteration)
            out, count = sequence_nll(model, rows, start=[start] * len(rows), batch_size=batch_size, pad_id=pad_id, stride=stride, head=controls.head)
            bar.update()
            return out, int(count.sum())

        true_nll, tokens = nll(None)
        unknown_nll, _ = nll(unknown)
        ids = [controls.value_id(name, v) for v in values]
        scores = np.stack([nll(t)[0] for t in ids], axis=1)
        truth = [values[ids.index(it[1 + slot])] for it in known]
        guess = [values[i] for i in scores.argmin(axis=1)]
        majority = max(controls.counts.get(name, {}).items(), key=lambda kv: kv[1], default=(values[0], 0))[0]
        report[name] = {
            "items": len(known),
            "perplexity_true": math.exp(float(true_nll.sum()) / max(tokens, 1)),
            "perplexity_unknown": math.exp(float(unknown_nll.sum()) / max(tokens, 1)),
            "accuracy": float(np.mean([g == t for g, t in zip(guess, truth)])),
            "macro_f1": float(f1_score(truth, guess, labels=values, average="macro", zero_division=0)),
            "majority_value": majority,
            "majority_accuracy": float(np.mean([t == majority for t in truth])),
            "held_out_values": dict(Counter(truth).most_common()),
        }
    bar.close()
    return report
