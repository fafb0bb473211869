"""Eager CPU decode passes read keys and values in runs of neighbouring rows (arseq.decode.slots.groups):
the partition is the cheapest one, a grouped pass gives the logits of one call over every row, and
the engine decodes a row the same whichever rows share its runs."""

import itertools
import random

import pytest
import torch

from arseq.decode import Engine, Row, SamplingConfig
from arseq.decode.slots import GROUP_CALL_BYTES, Slots, groups
from arseq.models import Transformer, TransformerConfig


def cost(runs, reads, call):
    return sum(call + (b - a) * max(reads[a:b]) for a, b, _ in runs)


def partitions(n):
    """Every way to cut rows 0..n-1 into runs of neighbours."""
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        yield [(a, b, 0) for a, b in zip(bounds, bounds[1:])]


def test_groups_is_the_cheapest_partition_into_runs():
    rnd = random.Random(0)
    for _ in range(300):
        reads = [rnd.choice([1, 2, 60, 64, 300, 521]) if rnd.random() < 0.5 else rnd.randint(1, 521) for _ in range(rnd.randint(1, 7))]
        call = rnd.choice([0, 1, 30, 85, 400, 10_000])
        runs = groups(reads, call)
        assert [a for a, _, _ in runs] == [0] + [b for _, b, _ in runs[:-1]] and runs[-1][1] == len(reads)
        assert all(n == max(reads[a:b]) for a, b, n in runs)
        assert cost(runs, reads, call) == min(cost(p, reads, call) for p in partitions(len(reads)))


def test_groups_keeps_rows_at_like_positions_together_and_reads_a_far_row_alone():
    assert groups([300] * 8, 85) == ((0, 8, 300),)
    assert groups([12, 9, 520, 10, 11, 14, 8, 13], 85) == ((0, 2, 12), (2, 3, 520), (3, 8, 14))
    assert groups([12, 9, 520, 10], 10_000) == ((0, 4, 520),)  # a call dearer than any read: one run


@pytest.mark.parametrize("width", [1, 3])  # a decode step; a verify pass of speculative decoding
def test_a_grouped_pass_gives_the_logits_of_one_call_over_every_row(width):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, max_seq_len=256, n_layer=2, n_head=4, d_model=32)).eval()
    model.setup_cache(4, 256)
    with torch.no_grad():
        model(torch.randint(1, 50, (4, 200)), pos=torch.arange(200).expand(4, 200))  # slots 0..199 of every row
        starts = [150, 3, 7, 40]
        tokens = torch.randint(1, 50, (4, width))
        pos = torch.tensor(starts)[:, None] + torch.arange(width)
        one = model(tokens, pos=pos, span=256)
        runs = groups([s + width for s in starts], 20)
        assert len(runs) > 1
        grouped = model(tokens, pos=pos, span=runs)
    model.clear_cache()
    torch.testing.assert_close(grouped, one, rtol=1e-5, atol=1e-6)  # the kernel's sums run over fewer masked slots
    assert torch.equal(grouped.argmax(-1), one.argmax(-1))


def test_eager_cpu_passes_group_rows_and_compiled_ones_read_a_span():
    model = Transformer(TransformerConfig(vocab_size=50, max_seq_len=64, n_layer=1, n_head=2, d_model=16)).eval()
    eager = Slots(model, 4, 64)
    assert eager.call == GROUP_CALL_BYTES // (4 * 2 * 16)  # float32 keys and values of one slot, one layer
    assert Slots(model, 4, 64, compile="auto").call is None
    model.clear_cache()


def test_a_row_far_behind_its_neighbours_decodes_as_it_does_alone():
    """Rows 200 tokens in, and one that joins then, its attention in runs of its own (a call made cheap):
    the tokens it gets alone, in one run."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, max_seq_len=320, n_layer=2, n_head=4, d_model=32)).eval()
    late = Row([7, 8, 9], SamplingConfig(max_new_tokens=40, temperature=1.0, top_k=20), seed=5)
    engine = Engine(model, 4)
    engine.submit(late)
    (alone,) = engine.run()
    engine.cache.call = 1
    for seed in range(3):
        engine.submit(Row([1 + seed, 2], SamplingConfig(max_new_tokens=250, temperature=1.0), seed=seed))
    for _ in range(200):
        engine.step()
    rid = engine.submit(late)
    out = {f.id: f.tokens for f in engine.run()}
    engine.close()
    assert out[rid] == alone.tokens and len(alone.tokens) == 40
