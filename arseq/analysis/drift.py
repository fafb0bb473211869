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
from typing import Callable, Literal, Sequence, get_args

import numpy as np
import torch
import torch.nn.functional as F

from arseq.models.transformer import Transformer

Kind = Literal["random", "likeliest_wrong", "plausible"]
KINDS: tuple[Kind, ...] = get_args(Kind)
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
    banned = _forbidden(model.cfg.vocab_size, specials)
    rows: dict[str, dict[str, list[np.ndarray]]] = {k: {"excess": [], "kl": [], "div": [], "group": []} for k in kinds}
    clean_rows = []
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(sites), batch_size):
            batch = sites[b0 : b0 + batch_size]
            fed = _feed(batch, items, context - offsets, offsets, pad_id, model.embed.weight.device)
            model.setup_cache(len(batch), context)
            _pick_wrong(batch, _prefill(model, fed), fed.suffix[:, 0], banned, mistake, items, rng, kinds)
            clean = _Continued(*_continue(model, fed.suffix, fed.ends, offsets, diverge), fed.target)
            clean_rows.append(clean.nll.cpu().numpy())
            for kind in kinds:
                for key, value in _corrupted(model, batch, kind, fed, clean, diverge).items():
                    rows[kind][key].append(value)
    finally:
        model.clear_cache()
        model.train(was_training)
    return _result(rows, clean_rows, offsets)


@dataclass
class _Fed:
    """One batch of sites as tensors: the shared prefixes x[..j-1] (each from position 0, padded after its end
    at `ends`), the fed suffixes x[j..j+K-1] and their targets x[j+1..j+K]."""

    prefix: torch.Tensor
    suffix: torch.Tensor
    target: torch.Tensor
    ends: torch.Tensor


def _feed(batch: list[Site], items: Sequence[np.ndarray], prefix_len: int, k: int, pad_id: int, device: torch.device) -> _Fed:
    n = len(batch)
    prefix = torch.full((n, prefix_len), pad_id, dtype=torch.long)
    suffix, target = torch.empty((n, k), dtype=torch.long), torch.empty((n, k), dtype=torch.long)
    ends = torch.empty(n, dtype=torch.long)
    for r, s in enumerate(batch):
        x = np.asarray(items[s.item], dtype=np.int64)
        before = x[max(0, s.pos - prefix_len) : s.pos]
        prefix[r, : len(before)] = torch.from_numpy(before)
        ends[r] = len(before)
        suffix[r] = torch.from_numpy(x[s.pos : s.pos + k])
        target[r] = torch.from_numpy(x[s.pos + 1 : s.pos + k + 1])
    return _Fed(prefix.to(device), suffix.to(device), target.to(device), ends.to(device))


def _prefill(model: Transformer, fed: _Fed) -> torch.Tensor:
    """Run the prefixes into the cache; return the model's prediction of each x[j] (a row's padding comes after it)."""
    n, length = fed.prefix.shape
    logits = model(fed.prefix, pos=torch.arange(length, device=fed.prefix.device).expand(n, length))
    return logits[torch.arange(n, device=logits.device), fed.ends - 1].float()


class _Continued:
    """A continuation's log-probs after each fed token, its greedy tokens, and the NLL of the true targets."""

    def __init__(self, lp: torch.Tensor, greedy: torch.Tensor, target: torch.Tensor):
        self.lp, self.greedy = lp, greedy
        self.nll = -lp.gather(-1, target[..., None]).squeeze(-1)


def _corrupted(model: Transformer, batch: list[Site], kind: str, fed: _Fed, clean: _Continued, diverge: bool) -> dict[str, np.ndarray]:
    """Excess NLL, KL, divergence and piece of each site with a wrong token of this kind (nothing without one)."""
    rows = [r for r, s in enumerate(batch) if s.wrong.get(kind) is not None]
    if not rows:
        return {}
    idx = torch.tensor(rows, device=fed.suffix.device)
    corrupted = fed.suffix.clone()
    corrupted[idx, 0] = torch.tensor([batch[r].wrong[kind] for r in rows], device=corrupted.device)
    wrong = _Continued(*_continue(model, corrupted, fed.ends, fed.suffix.shape[1], diverge), fed.target)
    kl = (clean.lp.exp() * (clean.lp - wrong.lp)).sum(-1)
    out = {
        "excess": (wrong.nll - clean.nll)[idx].cpu().numpy(),
        "kl": kl[idx].clamp(min=0).cpu().numpy(),
        "group": np.array([batch[r].group for r in rows]),
    }
    if diverge:
        out["div"] = (wrong.greedy != clean.greedy)[idx].cpu().numpy()
    return out


def _result(rows: dict[str, dict[str, list[np.ndarray]]], clean_rows: list[np.ndarray], k: int) -> DriftResult:
    def cat(parts: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(shape, dtype=dtype)

    return DriftResult(
        k,
        {kind: cat(v["excess"], (0, k), np.float64) for kind, v in rows.items()},
        {kind: cat(v["kl"], (0, k), np.float64) for kind, v in rows.items()},
        {kind: cat(v["div"], (0, k), bool) for kind, v in rows.items()},
        {kind: cat(v["group"], (0,), np.int64) for kind, v in rows.items()},
        cat(clean_rows, (0, k), np.float64),
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
