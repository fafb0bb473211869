"""Fill-in-the-middle training: the window transform, its sentinels, and that a FIM model infills what a
left-to-right one cannot."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from arseq.data.fim import Fim, FimWindows, for_training, reorder
from arseq.data.loader import RandomWindows
from arseq.decode.infill import MiddleView, hide_sentinels
from arseq.errors import DataError

FIM = Fim(100, 1.0, "psm")


@pytest.mark.parametrize("spm", [False, True])
def test_reorder_is_a_permutation_plus_sentinels(spm):
    rng = np.random.default_rng(0)
    for _ in range(50):
        tokens = np.concatenate([[1, 50, 51], rng.integers(3, 40, size=int(rng.integers(2, 30))), [2]])
        out = reorder(tokens, 3, 1, np.arange(0, 40, 3), rng, FIM, spm)
        assert out is not None and len(out) == len(tokens) + 3
        assert out[:3].tolist() == [1, 50, 51] and out[-1] == 2  # BOS and conditions in front, EOS at the end
        rest = Counter(out.tolist())
        assert [rest.pop(s) for s in (100, 101, 102)] == [1, 1, 1]
        assert rest == Counter(tokens.tolist())
        mid = out.tolist().index(102)
        order = out.tolist()
        if spm:  # <pre> <suf> suffix <mid> prefix middle
            assert order[3:5] == [100, 101]
            assert order[mid + 1 : -1] + order[5:mid] == tokens[3:-1].tolist()
        else:  # <pre> prefix <suf> suffix <mid> middle: prefix + middle + suffix is the body again
            suf = order.index(101)
            assert order[4:suf] + order[mid + 1 : -1] + order[suf + 1 : mid] == tokens[3:-1].tolist()


def test_cuts_fall_on_the_units_given():
    rng = np.random.default_rng(1)
    tokens = np.array([1, 3, 9, 9, 3, 9, 9, 3, 9, 2])  # "bars" start at the 3s
    bars = np.flatnonzero(tokens[1:-1] == 3)
    for _ in range(30):
        out = reorder(tokens, 1, 1, bars, rng, FIM, False).tolist()
        middle = out[out.index(102) + 1 : -1]
        assert not middle or middle[0] == 3  # a middle is whole bars
    assert reorder(np.array([1, 2]), 1, 1, np.array([0]), rng, FIM, False) is None  # nothing to cut: left as it is
    assert reorder(np.array([1, 7, 2]), 1, 1, np.array([], dtype=int), rng, FIM, False) is not None  # its ends will do


def test_windows_keep_length_head_and_other_items():
    offsets = np.array([0, 10, 30])
    stream = np.concatenate([[1, 50], np.arange(3, 10), [2], [1, 51], np.arange(10, 27), [2]])
    index = np.stack([np.arange(8, 24), np.arange(0, 16)])
    windows = stream[index]
    out = FimWindows(FIM, offsets, head=2)(windows, index, np.random.default_rng(0))
    assert out.shape == windows.shape
    assert out[0, :2].tolist() == windows[0, :2].tolist()  # the end of the first item, untouched
    assert out[0, 2:4].tolist() == [1, 51] and out[0, 4] == 100  # the longest run: its head, then <pre>
    assert out[1, :2].tolist() == [1, 50] and out[1, 2] == 100


def test_rate_zero_is_identity_and_bad_settings_are_one_line(tmp_path):
    assert Fim.of(0.0, "psm", 10) is None
    assert for_training(0.0, "psm", SimpleNamespace(vocab_size=10), None) == (None, None)
    with pytest.raises(DataError, match="data.fim_rate"):
        Fim.of(1.5, "psm", 10)
    with pytest.raises(DataError, match="data.fim_ordering"):
        Fim.of(0.5, "pms", 10)
    path = tmp_path / "train.npy"
    np.save(path, np.arange(200, dtype=np.uint16) % 50)
    plain = RandomWindows(path, 16, 4, seed=3)
    same = RandomWindows(path, 16, 4, seed=3, fim=None)
    for (x1, y1), (x2, y2), _ in zip(plain, same, range(3)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_sentinels_never_sampled_and_middle_view():
    fim = Fim(5, 0.5)
    mask = hide_sentinels(None, fim)([[1, 2]])
    assert mask.shape == (1, 8) and mask[0, :5].all() and not mask[0, 5:].any()
    seen = []

    def inner(rows):
        seen.append([list(r) for r in rows])
        return torch.ones(len(rows), 5, dtype=torch.bool)

    view = MiddleView(inner, [1, 3, 3], fim)
    row = [1, 5, 3, 6, 4, 7]
    hide_sentinels(view, fim)([row])
    row.append(4)
    hide_sentinels(view, fim)([row])
    assert seen == [[[1, 3, 3]], [[1, 3, 3, 4]]]


def _chain(first: str, n: int = 5) -> str:
    """Letters counting up from `first` (mod h): the first is a coin toss left to right, and fixed by the next."""
    return "".join("abcdefgh"[("abcdefgh".index(first) + k) % 8] for k in range(n))


@pytest.mark.slow
def test_fim_model_infills_a_pattern_better(tmp_path, monkeypatch):
    from arseq.analysis.infill_nll import Cut, both_sides, prefix_only
    from arseq.artifacts.checkpoint import load
    from arseq.cli import main

    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i, first in enumerate(rng.choice(list("abcdefgh"), 200)):
        (data / f"{i:03d}.txt").write_text(_chain(first))
    models = {}
    for rate in (0.0, 0.9):
        config = tmp_path / f"c{rate}.yaml"
        config.write_text(f"""seed: 0
modality: {{name: text, tokenizer: char}}
data: {{paths: {data}, val_fraction: 0.1, block_size: 16, batch_size: 16, fim_rate: {rate}}}
model: {{n_layer: 2, n_head: 2, d_model: 32}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 10}}
trainer: {{max_steps: 500, val_check_interval: 500, check_val_every_n_epoch: null, limit_val_batches: 2,
  accelerator: cpu, enable_progress_bar: false, enable_model_summary: false, logger: false,
  default_root_dir: {tmp_path / f"runs{rate}"}}}
""")
        assert main(["train", "--config", str(config)]) == 0
        models[rate] = load(next((tmp_path / f"runs{rate}").rglob("last.ckpt")))
    tok = models[0.0].tokenizer
    cuts = [Cut([tok.bos_id], [], tok.encode(c[0]), tok.encode(c[1:])) for c in map(_chain, "abcdefgh" * 4)]
    fim = Fim.from_dict(models[0.9].meta.fim)
    filled, n = both_sides(models[0.9].model, fim, cuts)
    alone, m = prefix_only(models[0.0].model, cuts)
    assert n == m == 32
    assert alone / m > 1.5 and filled / n < 0.6 * (alone / m)  # the first letter: a coin toss (ln 8) vs fixed by the next
    assert models[0.0].meta.fim is None and models[0.0].model.cfg.vocab_size == tok.vocab_size  # rate 0: no sentinels
