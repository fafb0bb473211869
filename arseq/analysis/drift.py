"""Injected errors, teacher-forced: does one wrong token keep hurting the tokens after it?

For held-out items and random positions j, the true token x[j] is replaced by a wrong one and the true
continuation x[j+1..j+K] is scored under the clean and the corrupted prefix. The excess NLL and the KL
divergence between the two next-token distributions, per offset k = 1..K, say how long the error is felt.
Both prefixes share x[..j-1], so it is run once into the KV cache and only the K-token suffixes are run
per kind of error: the cost is one context plus K tokens per kind, not a context per kind.

The same cache also gives the free-running view: greedy continuations of the clean and corrupted prefixes
compared token by token ("divergence"). Under teacher forcing a model of a Markov process recovers at once
(the true tokens after the error say everything); letting it run shows whether the error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from arseq.models.transformer import Transformer

KINDS = ("random", "likeliest_wrong", "plausible")
# (tokens, position, rng) -> a wrong token for tokens[position], or None where there is none
Mistake = Callable[[np.ndarray, int, np.random.Generator], "int | None"]


@dataclass
class Site:
    """One injection: position `pos` of item `item`, in sampling unit `group`; the wrong token per kind
    (None: that kind is not used here)."""

    item: int
    pos: int
    group: int
    wrong: dict[str, int | None] = field(default_factory=dict)


@dataclass
class DriftResult:
    """Per kind: per-site rows of excess NLL, KL and free-running divergence over offsets 1..K."""

    offsets: int
    excess: dict[str, np.ndarray]  # (sites, K) nats
    kl: dict[str, np.ndarray]  # (sites, K) nats
    diverged: dict[str, np.ndarray]  # (sites, K) bool: greedy continuations differ at this offset
    groups: dict[str, np.ndarray]  # (sites,) piece of the data each site is in, for the bootstrap
    clean_nll: np.ndarray  # (all sites, K) NLL of the true continuation with the clean prefix


def choose_sites(
    items: Sequence[np.ndarray], units: int, positions: int, offsets: int, unit_len: int, rng: np.random.Generator, start: int = 1
) -> list[Site]:
    """`positions` random positions in each of `units` random pieces of the data, each leaving `offsets` true
    tokens after it. A piece is an item, or a `unit_len` slice of a longer one (one long text file still gives
    many independent pieces: the bootstrap resamples pieces). Positions before `start` (BOS, and a
    conditioned model's control tokens after it) are never chosen."""
    pieces = []
    for i, item in enumerate(items):
        last = len(item) - offsets  # positions start..last-1 leave K true tokens after them
        for lo in range(start, max(start, last), unit_len):
            hi = min(lo + unit_len, last)
            if hi > lo:
                pieces.append((i, lo, hi))
    chosen = sorted(rng.choice(len(pieces), min(units, len(pieces)), replace=False).tolist()) if pieces else []
    sites = []
    for g in chosen:
        i, lo, hi = pieces[g]
        for pos in sorted(rng.choice(np.arange(lo, hi), min(positions, hi - lo), replace=False).tolist()):
            sites.append(Site(i, int(pos), g))
    return sites


def _forbidden(vocab: int, specials: Sequence[int]) -> np.ndarray:
    mask = np.zeros(vocab, dtype=bool)
    mask[[s for s in specials if 0 <= s < vocab]] = True
    return mask


@torch.inference_mode()
def measure(
    model: Transformer,
    items: Sequence[np.ndarray],
    sites: list[Site],
    offsets: int,
    *,
    specials: Sequence[int] = (),
    mistake: Mistake | None = None,
    kinds: Sequence[str] = KINDS,
    batch_size: int = 64,
    pad_id: int = 0,
    seed: int = 0,
    diverge: bool = True,
) -> DriftResult:
    """Teacher-forced excess NLL / KL and (with `diverge`: K sequential greedy steps per kind, most of the
    cost) greedy divergence per offset, for each kind of injected error."""
    context = model.cfg.max_seq_len
    if not 1 <= offsets < context:
        raise ValueError(f"--offsets must be between 1 and the model's context - 1 ({context - 1}), got {offsets}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown error kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    vocab = model.cfg.vocab_size
    banned = _forbidden(vocab, specials)
    K, C0 = offsets, context - offsets
    device = model.embed.weight.device
    out = {k: {"excess": [], "kl": [], "div": [], "item": []} for k in kinds}
    clean_rows = []
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(sites), batch_size):
            batch = sites[b0 : b0 + batch_size]
            B = len(batch)
            prefix = torch.full((B, C0), pad_id, dtype=torch.long)  # each row from position 0, padded after its end
            suffix = torch.empty((B, K), dtype=torch.long)  # x[j..j+K-1]: what is fed after the prefix
            target = torch.empty((B, K), dtype=torch.long)  # x[j+1..j+K]
            ends = torch.empty(B, dtype=torch.long)
            for r, s in enumerate(batch):
                x = np.asarray(items[s.item], dtype=np.int64)
                before = x[max(0, s.pos - C0) : s.pos]
                prefix[r, : len(before)] = torch.from_numpy(before)
                ends[r] = len(before)
                suffix[r] = torch.from_numpy(x[s.pos : s.pos + K])
                target[r] = torch.from_numpy(x[s.pos + 1 : s.pos + K + 1])
            prefix, suffix, target, ends = prefix.to(device), suffix.to(device), target.to(device), ends.to(device)
            model.setup_cache(B, context)
            logits = model(prefix, pos=torch.arange(C0, device=device).expand(B, C0))  # a row's padding comes after it
            at_j = logits[torch.arange(B, device=device), ends - 1].float()  # the model's prediction of x[j]
            _pick_wrong(batch, at_j, suffix[:, 0], banned, mistake, items, rng, kinds)
            clean_lp, clean_greedy = _continue(model, suffix, ends, K, diverge)
            clean_nll = -clean_lp.gather(-1, target[..., None]).squeeze(-1)
            clean_rows.append(clean_nll.cpu().numpy())
            for kind in kinds:
                rows = [r for r, s in enumerate(batch) if s.wrong.get(kind) is not None]
                if not rows:
                    continue
                idx = torch.tensor(rows, device=device)
                corrupted = suffix.clone()
                corrupted[idx, 0] = torch.tensor([batch[r].wrong[kind] for r in rows], device=device)
                lp, greedy = _continue(model, corrupted, ends, K, diverge)
                nll = -lp.gather(-1, target[..., None]).squeeze(-1)
                p_clean = clean_lp.exp()
                kl = (p_clean * (clean_lp - lp)).sum(-1)
                out[kind]["excess"].append((nll - clean_nll)[idx].cpu().numpy())
                out[kind]["kl"].append(kl[idx].clamp(min=0).cpu().numpy())
                if diverge:
                    out[kind]["div"].append((greedy != clean_greedy)[idx].cpu().numpy())
                out[kind]["item"].append(np.array([batch[r].group for r in rows]))
    finally:
        model.clear_cache()
        model.train(was_training)

    def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype)

    return DriftResult(
        K,
        {k: cat(v["excess"], (0, K), np.float64) for k, v in out.items()},
        {k: cat(v["kl"], (0, K), np.float64) for k, v in out.items()},
        {k: cat(v["div"], (0, K), bool) for k, v in out.items()},
        {k: cat(v["item"], (0,), np.int64) for k, v in out.items()},
        cat(clean_rows, (0, K), np.float64),
    )


def _pick_wrong(
    batch: list[Site],
    at_j: torch.Tensor,
    true: torch.Tensor,
    banned: np.ndarray,
    mistake: Mistake | None,
    items: Sequence[np.ndarray],
    rng: np.random.Generator,
    kinds: Sequence[str],
) -> None:
    """Fill each site's wrong token per kind: uniform, the model's likeliest wrong one, the modality's near miss."""
    logits = at_j.clone()
    logits[:, torch.from_numpy(banned).to(logits.device)] = float("-inf")
    logits.scatter_(1, true[:, None], float("-inf"))
    likeliest = logits.argmax(-1).tolist()
    allowed = np.flatnonzero(~banned)
    for r, s in enumerate(batch):
        t = int(true[r])
        choices = allowed[allowed != t]
        s.wrong["random"] = int(rng.choice(choices)) if len(choices) and "random" in kinds else None
        s.wrong["likeliest_wrong"] = likeliest[r] if len(choices) and "likeliest_wrong" in kinds else None
        w = mistake(np.asarray(items[s.item]), s.pos, rng) if mistake is not None and "plausible" in kinds else None
        s.wrong["plausible"] = int(w) if w is not None and w != t else None


def _continue(model: Transformer, suffix: torch.Tensor, ends: torch.Tensor, k: int, diverge: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """After the cached prefixes (row r's ends at position ends[r]): log-probs of the next token after each of
    the K fed tokens (teacher forcing), and (with `diverge`; else zeros) K greedy tokens generated from the
    first fed token on (free running)."""
    pos = ends[:, None] + torch.arange(k, device=suffix.device)[None, :]
    logp = F.log_softmax(model(suffix, pos=pos).float(), dim=-1)
    greedy = torch.zeros_like(suffix)
    token = suffix[:, 0]
    for step in range(k if diverge else 0):  # overwrites the cache slots of the suffix one at a time; the prefix stays
        token = model(token[:, None], pos=pos[:, step : step + 1])[:, -1].argmax(-1)
        greedy[:, step] = token
    return logp, greedy


def bootstrap_curve(values: np.ndarray, groups: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Mean over rows per offset, with a percentile CI from resampling whole pieces of data (positions
    in one piece are not independent)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"mean": [], "lo": [], "hi": []}
    uniq, inv = np.unique(groups, return_inverse=True)
    sums = np.zeros((len(uniq), values.shape[1]))
    np.add.at(sums, inv, values)
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(uniq), size=(n_boot, len(uniq)))
    weights = np.zeros((n_boot, len(uniq)))
    np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)
    means = (weights @ sums) / np.maximum(weights @ counts, 1)[:, None]
    a = (1 - level) / 2
    return {"mean": values.mean(0).tolist(), "lo": np.quantile(means, a, axis=0).tolist(), "hi": np.quantile(means, 1 - a, axis=0).tolist()}


def summarize_curve(mean: Sequence[float]) -> dict[str, float | int | None]:
    """Peak excess, recovery half-life (first offset after the peak below half of it; None: not within K)
    and the share of the peak still there at offset K (1: no recovery at all, 0: full recovery)."""
    m = np.asarray(mean, dtype=np.float64)
    if m.size == 0:
        return {"peak": None, "peak_offset": None, "half_life": None, "remaining_share": None}
    peak_at = int(np.argmax(m))
    peak = float(m[peak_at])
    below = np.flatnonzero(m[peak_at:] < peak / 2) if peak > 0 else np.array([0])
    half = int(peak_at + below[0] + 1) if below.size else None
    return {"peak": peak, "peak_offset": peak_at + 1, "half_life": half, "remaining_share": float(m[-1] / peak) if peak > 0 else 0.0}


def report(result: DriftResult, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """The JSON-able curves and summary numbers of every kind."""
    out = {}
    for kind in result.excess:
        if len(result.excess[kind]) == 0:
            continue
        g = result.groups[kind]
        excess = bootstrap_curve(result.excess[kind], g, n_boot, seed=seed)
        out[kind] = {
            "sites": int(len(g)),
            "pieces": int(len(np.unique(g))),
            "excess_nll": excess,
            "kl": bootstrap_curve(result.kl[kind], g, n_boot, seed=seed),
            **({"divergence": bootstrap_curve(result.diverged[kind].astype(np.float64), g, n_boot, seed=seed)} if len(result.diverged[kind]) else {}),
            **summarize_curve(excess["mean"]),
        }
    return out
