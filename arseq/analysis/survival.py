"""Free-running survival against the independence argument.

If every token went wrong independently with probability e, P(no error in the first n tokens) would be
(1 - e)^n. We sample without the modality's constraint, mark errors with the modality's predicate (the
constraint would have forbidden the token, plus the modality's own rule), and compare the measured survival
curve with (1 - e)^n for the measured e. The clustering ratio P(error at t | an error in the previous w
tokens) / P(error) is 1 under independence, > 1 when errors come in bursts, < 1 when the model recovers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

Predicate = Callable[[Sequence[int]], np.ndarray]  # whole sequence -> bool per token
Constraint = Callable[[list[list[int]]], torch.Tensor]


def mark_errors(
    prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]], constraint: Constraint | None, predicate: Predicate | None
) -> list[np.ndarray]:
    """Per sequence, a bool per generated token: the constraint would have forbidden it, or `predicate` says so.

    The constraint is replayed as the sampler would call it (rows growing in place, one call per step)."""
    errors = [np.zeros(len(g), dtype=bool) for g in generated]
    if constraint is not None:
        rows = [list(p) for p in prompts]
        for t in range(max((len(g) for g in generated), default=0)):
            active = [i for i, g in enumerate(generated) if t < len(g)]
            allowed = constraint([rows[i] for i in active])
            for a, i in enumerate(active):
                token = int(generated[i][t])
                errors[i][t] = not (0 <= token < allowed.shape[1] and bool(allowed[a, token]))
                rows[i].append(token)
    if predicate is not None:
        for i, (p, g) in enumerate(zip(prompts, generated)):
            flags = np.asarray(predicate(list(p) + list(g)), dtype=bool)[len(p) :]
            errors[i] |= flags[: len(g)]
    return errors


def _kaplan_meier(first: np.ndarray, length: np.ndarray, horizon: int) -> np.ndarray:
    """S(n) for n = 1..horizon from each sequence's first error index (-1: none) and its length (censoring)."""
    t = np.arange(horizon)
    at_risk = ((length[:, None] > t[None, :]) & ((first[:, None] < 0) | (first[:, None] >= t[None, :]))).sum(0)
    events = (first[:, None] == t[None, :]).sum(0)
    hazard = np.where(at_risk > 0, events / np.maximum(at_risk, 1), 0.0)
    return np.cumprod(1 - hazard)


def survival(errors: Sequence[np.ndarray], horizon: int | None = None, n_boot: int = 500, level: float = 0.95, seed: int = 0) -> dict[str, object]:
    """Measured S(n) (Kaplan-Meier: sequences that end early are censored) with a bootstrap band over
    sequences, next to (1 - e)^n with its band, e the pooled per-token error rate."""
    lengths = np.array([len(e) for e in errors], dtype=np.int64)
    if lengths.sum() == 0:
        raise ValueError("no generated tokens to measure survival on")
    horizon = int(horizon or lengths.max())
    first = np.array([int(np.argmax(e)) if e.any() else -1 for e in errors], dtype=np.int64)
    counts = np.array([int(e.sum()) for e in errors], dtype=np.int64)
    n = np.arange(1, horizon + 1)
    rate = counts.sum() / lengths.sum()
    rng = np.random.default_rng(seed)
    draws_s, draws_i = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(errors), len(errors))
        draws_s.append(_kaplan_meier(first[idx], lengths[idx], horizon))
        draws_i.append((1 - counts[idx].sum() / max(1, lengths[idx].sum())) ** n)
    a = (1 - level) / 2
    boot_s, boot_i = np.array(draws_s), np.array(draws_i)
    return {
        "n": n.tolist(),
        "error_rate": float(rate),
        "sequences": int(len(errors)),
        "tokens": int(lengths.sum()),
        "survival": _kaplan_meier(first, lengths, horizon).tolist(),
        "survival_lo": np.quantile(boot_s, a, axis=0).tolist(),
        "survival_hi": np.quantile(boot_s, 1 - a, axis=0).tolist(),
        "independent": ((1 - rate) ** n).tolist(),
        "independent_lo": np.quantile(boot_i, a, axis=0).tolist(),
        "independent_hi": np.quantile(boot_i, 1 - a, axis=0).tolist(),
    }


def clustering_ratio(errors: Sequence[np.ndarray], window: int = 8) -> dict[str, float | int | None]:
    """P(error at t | at least one error in t-window..t-1) / P(error), over tokens with a full window behind."""
    hits = after = base_hits = base = 0
    for e in errors:
        e = np.asarray(e, dtype=bool)
        if len(e) <= window:
            continue
        recent = np.convolve(e.astype(np.int64), np.ones(window, dtype=np.int64))[: len(e)]  # errors in t-w+1..t
        prior = np.concatenate([[0], recent[:-1]])[window:] > 0  # errors in t-w..t-1
        cur = e[window:]
        hits += int((cur & prior).sum())
        after += int(prior.sum())
        base_hits += int(cur.sum())
        base += len(cur)
    p = base_hits / base if base else 0.0
    conditional = hits / after if after else None
    ratio = conditional / p if conditional is not None and p > 0 else None
    return {"window": window, "p_error": p, "p_error_after_error": conditional, "ratio": ratio, "conditioned_tokens": after}
