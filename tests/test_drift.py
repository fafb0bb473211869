"""`arseq analyze drift` must tell the worlds apart: recovery, propagation, independent and bursty errors.

Tiny transformers are trained here directly (plain Adam, a few hundred steps, seconds on a CPU) on data
whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arseq.analysis import drift as tf
from arseq.analysis import survival as fr
from arseq.models.transformer import Transformer, TransformerConfig

LENGTH = 32


def _train(make_batch, vocab: int, steps: int = 400, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=vocab, max_seq_len=LENGTH, n_layer=2, n_head=2, d_model=32))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = torch.from_numpy(make_batch(rng, 32))
        loss = F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


PATTERN = np.array([3, 4, 3, 5])  # period 4; what follows a 3 depends on the token before it


def periodic(rng: np.random.Generator, n: int) -> np.ndarray:
    phase = rng.integers(0, len(PATTERN), n)
    return PATTERN[(phase[:, None] + np.arange(LENGTH + 1)[None, :]) % len(PATTERN)]


SUCC_V = 16


def successor(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.integers(0, SUCC_V, n)[:, None] + np.arange(LENGTH + 1)[None, :]) % SUCC_V


@pytest.fixture(scope="module")
def periodic_model() -> Transformer:
    return _train(periodic, vocab=8)


@pytest.fixture(scope="module")
def successor_model() -> Transformer:
    return _train(successor, vocab=SUCC_V)


def _drift(model: Transformer, make_batch, offsets: int) -> tuple[tf.DriftResult, dict]:
    items = list(make_batch(np.random.default_rng(1), 40))
    sites = tf.choose_sites(items, 40, 4, offsets, model.cfg.max_seq_len, np.random.default_rng(2))
    result = tf.measure(model, items, sites, offsets, kinds=("random", "likeliest_wrong"), batch_size=32)
    return result, tf.report(result, n_boot=200)


def test_periodic_world_recovers_within_the_period(periodic_model):
    p, K = len(PATTERN), 12
    result, report = _drift(periodic_model, periodic, K)
    assert result.clean_nll.mean() < 0.05  # the model learned the pattern
    for kind in ("random", "likeliest_wrong"):
        mean = np.array(report[kind]["excess_nll"]["mean"])
        assert mean.max() > 1.0, "the injected error must hurt right after it"
        beyond = mean[p:]
        assert beyond.mean() < 0.1 and beyond.max() < 0.3, f"{kind}: excess must be ~0 beyond the period, got {mean.round(3)}"
        assert report[kind]["half_life"] <= p and report[kind]["remaining_share"] < 0.1
        assert np.array(report[kind]["kl"]["mean"])[p:].mean() < 0.1


def test_successor_world_propagates_at_every_offset(successor_model):
    K = 12
    result, report = _drift(successor_model, successor, K)
    assert result.clean_nll.mean() < 0.05
    for kind in ("random", "likeliest_wrong"):
        r = report[kind]
        # free running from the wrong token, every later token is off: the effect never fades
        assert min(r["divergence"]["mean"]) > 0.95 and r["divergence"]["lo"][-1] > 0.9
        # teacher-forced, the true next token contradicts the error at offset 1; after it, the true tokens
        # restate the whole state (a Markov world), so the excess is confined to offset 1
        assert r["excess_nll"]["mean"][0] > 2.0 and r["peak_offset"] == 1
    periodic_like = np.array(report["random"]["excess_nll"]["mean"][1:])
    assert np.abs(periodic_like).max() < 0.2


def _independent(rng, m, length, e):
    return [rng.random(length) < e for _ in range(m)]


def _bursty(rng, m, length, e, stay=0.9):
    """Two-state chain: an error is followed by another with probability `stay`; mean rate e."""
    enter = e * (1 - stay) / (1 - e)
    out = []
    for _ in range(m):
        x, state = np.zeros(length, dtype=bool), rng.random() < e
        for t in range(length):
            state = rng.random() < (stay if state else enter)
            x[t] = state
        out.append(x)
    return out


def test_independent_errors_follow_one_minus_e_to_the_n():
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 120, 600)
    errors = [rng.random(n) < 0.02 for n in lengths]  # sequences end at different lengths: censoring
    s = fr.survival(errors, horizon=100, n_boot=300)
    assert abs(s["error_rate"] - 0.02) < 0.004
    measured, lo, hi = (np.array(s[k]) for k in ("survival", "survival_lo", "survival_hi"))
    independent = np.array(s["independent"])
    assert np.all((independent >= lo - 0.01) & (independent <= hi + 0.01))
    assert np.abs(measured - 0.98 ** np.arange(1, 101)).max() < 0.06
    ratio = fr.clustering_ratio(errors, window=8)["ratio"]
    assert 0.8 < ratio < 1.2


def test_bursty_errors_cluster_and_survive_longer():
    rng = np.random.default_rng(0)
    errors = _bursty(rng, 400, 100, 0.02)
    s = fr.survival(errors, n_boot=200)
    assert fr.clustering_ratio(errors, window=8)["ratio"] > 3
    # the same error rate spread in bursts leaves more sequences error-free than independence predicts
    assert s["survival_lo"][-1] > s["independent_hi"][-1]


def test_constraint_replay_and_predicate_mark_errors():
    """Errors are tokens the constraint forbids (replayed as the sampler calls it) or the predicate flags."""

    def only_even(rows):
        mask = torch.zeros(len(rows), 10, dtype=torch.bool)
        mask[:, ::2] = True
        mask[[i for i, r in enumerate(rows) if len(r) >= 4], 9] = True  # row state: 9 allowed from the 4th token on
        return mask

    marked = fr.mark_errors([[0], [0, 2]], [[2, 3, 9, 9], [9, 4]], only_even, lambda seq: np.array(seq) == 4)
    assert marked[0].tolist() == [False, True, True, False]
    assert marked[1].tolist() == [True, True]


def test_half_life_and_remaining_share():
    assert tf.summarize_curve([0.1, 2.0, 1.5, 0.9, 0.2])["half_life"] == 4
    persistent = tf.summarize_curve([1.0, 1.0, 0.9, 0.95])
    assert persistent["half_life"] is None and persistent["remaining_share"] > 0.9
    band = tf.bootstrap_curve(np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]]), np.array([0, 1, 2]), n_boot=200)
    assert band["mean"] == [2.0, 0.0] and band["lo"][0] < 2.0 < band["hi"][0] and band["lo"][1] == band["hi"][1] == 0.0
