"""How much the far side helps: the NLL of a true middle given both sides (a FIM model's infilling prompt) and
given the prefix alone (left to right), on the same held-out cuts. The measure behind `benchmarks/bench_fim.py`
and the FIM tests; `revise` uses the same prompts to score spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from arseq.data.fim import Fim
from arseq.models.scoring import sequence_nll
from arseq.models.transformer import Transformer


@dataclass
class Cut:
    """One held-out item cut in three: `head` (BOS and control tokens), prefix, middle, suffix (no EOS)."""

    head: list[int]
    prefix: list[int]
    middle: list[int]
    suffix: list[int]


def both_sides(model: Transformer, fim: Fim, cuts: Sequence[Cut], pad_id: int = 0, batch_size: int = 32) -> tuple[float, int]:
    """Summed NLL (nats) of the middles given prefix and suffix (`Fim.prompt`; conditions right after BOS), and
    how many tokens that is."""
    seqs, start = [], []
    for c in cuts:
        prompt = fim.prompt(c.head[:1], c.prefix, c.suffix)
        prompt = [*prompt[:1], *c.head[1:], *prompt[1:]]
        seqs.append(prompt + c.middle)
        start.append(len(prompt))
    return _total(model, seqs, start, pad_id, batch_size)


def prefix_only(model: Transformer, cuts: Sequence[Cut], pad_id: int = 0, batch_size: int = 32) -> tuple[float, int]:
    """Summed NLL (nats) of the middles given the head and prefix alone (left to right), and the token count."""
    seqs = [[*c.head, *c.prefix, *c.middle] for c in cuts]
    return _total(model, seqs, [len(c.head) + len(c.prefix) for c in cuts], pad_id, batch_size)


def _total(model: Transformer, seqs: list[list[int]], start: list[int], pad_id: int, batch_size: int) -> tuple[float, int]:
    context = model.cfg.max_seq_len + 1
    too_long = [len(s) for s in seqs if len(s) > context]
    if too_long:  # a window slide would drop the sentinels: keep cuts within the context
        raise ValueError(f"{len(too_long)} scored sequences are longer than the context ({max(too_long)} > {context})")
    nll, count = sequence_nll(model, seqs, start=start, pad_id=pad_id, batch_size=batch_size)
    return float(nll.sum()), int(count.sum())


def cut_items(
    items: Sequence[np.ndarray],
    head: int,
    bounds: Callable[[np.ndarray], np.ndarray],
    gap: int,
    side: int,
    rng: np.random.Generator,
    limit: int,
    per_item: int = 1,
) -> list[Cut]:
    """`per_item` cuts per item (those with room): a middle of `gap` units (between unit boundaries `bounds(body)`)
    with up to `side` units on each side, the whole within `limit` tokens (far ends trimmed to fit)."""
    cuts = []
    for item in items:
        item = np.asarray(item, dtype=np.int64)
        body = item[head : len(item) - 1]  # the EOS is not part of the suffix
        at = np.asarray(bounds(body), dtype=np.int64)
        starts = np.unique(np.concatenate([[0], at[(at > 0) & (at < len(body))], [len(body)]]))  # unit k: starts[k]..starts[k+1]
        units = len(starts) - 1
        if units < gap + 2:
            continue
        for _ in range(per_item):
            a = int(rng.integers(1, units - gap))  # at least one unit on each side
            lo, hi = starts[max(0, a - side)], starts[min(units, a + gap + side)]
            c = Cut(
                item[:head].tolist(), body[lo : starts[a]].tolist(), body[starts[a] : starts[a + gap]].tolist(), body[starts[a + gap] : hi].tolist()
            )
            while _length(c) > limit and (len(c.prefix) > 1 or len(c.suffix) > 1):
                if len(c.prefix) > 1:  # trim the far ends
                    c.prefix = c.prefix[max(1, len(c.prefix) // 4) :]
                if len(c.suffix) > 1:
                    c.suffix = c.suffix[: len(c.suffix) - max(1, len(c.suffix) // 4)]
            if _length(c) <= limit and c.middle:
                cuts.append(c)
    return cuts


def _length(c: Cut) -> int:
    return len(c.head) + len(c.prefix) + len(c.middle) + len(c.suffix) + 3
