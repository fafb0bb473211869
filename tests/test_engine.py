"""The decode engine (arseq.decode.engine): rows that join mid-flight, leave or are cancelled never change
another row's tokens; a row's tokens are the same whatever shares its steps (greedy and seeded sampling,
every modality's constraint, guidance, speculative decoding); per-row settings; length control; bad input."""

from __future__ import annotations

import random

import pytest
import torch
from test_speculative import CASES, tiny

from arseq.decode import DraftModel, Engine, NGram, Row, SamplingConfig, Speculative, generate

GREEDY = SamplingConfig(max_new_tokens=30, temperature=0)
SAMPLED = SamplingConfig(max_new_tokens=30, temperature=1.0, top_p=0.95)


def run_alone(model, row: Row, slots: int, length: int, **engine) -> list[int]:
    e = Engine(model, slots, length=length, **engine)
    try:
        rid = e.submit(row)
        return next(f.tokens for f in e.run() if f.id == rid)
    finally:
        e.close()


def joins_late(model, row: Row, others: list[Row], slots: int, length: int, after: int, **engine) -> list[int]:
    """`row` submitted once the `others` have decoded `after` steps; its tokens."""
    e = Engine(model, slots, length=length, **engine)
    try:
        for other in others:
            e.submit(other)
        done = []
        for _ in range(after):
            done += e.step()
        rid = e.submit(row)
        done += e.run()
        return next(f.tokens for f in done if f.id == rid)
    finally:
        e.close()


@pytest.mark.parametrize("cfg", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_row_that_joins_mid_flight_gets_exactly_its_tokens_alone(name, cfg):
    tok, make, prompts = CASES[name]()
    model = tiny(tok.vocab_size, context=256, scale=0.3)
    long = SamplingConfig(max_new_tokens=140, temperature=1.0)  # still running when the row joins
    stop = (tok.eos_id,)
    row = Row(list(prompts[-1]), SamplingConfig(**{**cfg.__dict__, "stop_tokens": stop}), seed=7, constraint=make())
    others = [Row(list(prompts[0]), long, seed=s, constraint=make()) for s in range(3)]
    alone = run_alone(model, Row(row.prompt, row.cfg, seed=7, constraint=make()), 4, 256, pad_id=tok.pad_id)
    assert joins_late(model, row, others, 4, 256, after=100, pad_id=tok.pad_id) == alone
    assert len(alone) > 3


def test_a_guided_row_that_joins_late_equals_itself_alone():
    model = tiny(16, context=64)
    cfg = SamplingConfig(max_new_tokens=20, temperature=0.8, guidance=2.5)
    row = lambda: Row([1, 9, 4], cfg, seed=3, guide=[1, 0, 4])  # noqa: E731
    others = [Row([2, 3], SamplingConfig(max_new_tokens=50), seed=s) for s in range(2)]
    alone = run_alone(model, row(), 5, 64)
    assert joins_late(model, row(), others, 5, 64, after=25) == alone
    assert alone != run_alone(model, Row([1, 9, 4], SamplingConfig(max_new_tokens=20, temperature=0.8), seed=3), 5, 64)


@pytest.mark.parametrize("proposer", ["draft", "ngram"])
def test_speculative_rows_joining_late_equal_themselves_alone(proposer):
    model = tiny(20, context=64)
    make = lambda: Speculative(DraftModel(tiny(20, context=64, layers=1, width=16, seed=5)) if proposer == "draft" else NGram(), 3)  # noqa: E731
    cfg = SamplingConfig(max_new_tokens=25, temperature=1.0)
    row = lambda: Row([1, 2, 3], cfg, seed=11)  # noqa: E731
    others = [Row([4, 4], SamplingConfig(max_new_tokens=60), seed=s) for s in range(2)]
    alone = run_alone(model, row(), 3, 64, speculative=make())
    assert joins_late(model, row(), others, 3, 64, after=10, speculative=make()) == alone


def test_a_cancelled_row_frees_its_slot_and_changes_no_other_row():
    model = tiny(20, context=64)
    rows = [Row([1, 2], SamplingConfig(max_new_tokens=40), seed=s) for s in range(3)]
    alone = [run_alone(model, r, 2, 64) for r in rows]
    e = Engine(model, 2, length=64)
    ids = [e.submit(r) for r in rows]
    done = []
    for _ in range(5):
        done += e.step()
    assert e.active == 2 and e.waiting == 1
    e.cancel(ids[0])
    e.cancel(12345)  # unknown: nothing happens
    done += e.step()
    assert e.active == 2 and e.waiting == 0  # the waiting row took the freed slot
    done += e.run()
    e.cancel(ids[1])  # finished: nothing happens
    assert e.step() == []
    e.close()
    by = {f.id: f for f in done}
    assert by[ids[0]].cancelled and alone[0][: len(by[ids[0]].tokens)] == by[ids[0]].tokens
    assert [by[i].tokens for i in ids[1:]] == alone[1:]


def test_random_join_and_leave_schedules_never_change_a_row():
    """200 schedules (fixed seed): rows submitted at random steps, some cancelled; every row that ran to its
    end equals itself alone, every cancelled row is a prefix of that."""
    model = tiny(12, context=32, layers=1, width=16)
    rnd = random.Random(0)
    rows = [
        Row(
            [1 + i % 5, 2 + i % 3],
            SamplingConfig(max_new_tokens=rnd.randint(3, 14), temperature=rnd.choice([0, 0.9]), top_k=rnd.choice([None, 4]), stop_tokens=(0,)),
            seed=i,
        )
        for i in range(8)
    ]
    alone = [run_alone(model, r, 3, 32) for r in rows]
    for _ in range(200):
        e = Engine(model, 3, length=32)
        pending = sorted(rnd.sample(range(8), rnd.randint(1, 8)), key=lambda _: rnd.random())
        ids, done, cancel = {}, [], {}
        while pending or e.active or e.waiting:
            if pending and rnd.random() < 0.5:
                i = pending.pop()
                ids[e.submit(rows[i])] = i
                if rnd.random() < 0.2:
                    cancel[rnd.randint(0, 10)] = next(iter(ids))  # a cancellation some steps on
            for when in [w for w in cancel if w == 0]:
                e.cancel(cancel.pop(when))
            cancel = {w - 1: rid for w, rid in cancel.items()}
            done += e.step()
        e.close()
        for f in done:
            want = alone[ids[f.id]]
            assert f.tokens == want if not f.cancelled else want[: len(f.tokens)] == f.tokens


def test_per_row_settings_in_one_batch_equal_each_setting_alone():
    model = tiny(20, context=64)
    cfgs = [
        SamplingConfig(max_new_tokens=12, temperature=t, top_k=k, top_p=p, min_p=m, repetition_penalty=r)
        for t, k, p, m, r in [(0, None, None, None, 1.0), (1.2, 5, None, None, 1.0), (0.7, None, 0.8, None, 1.3), (1.0, None, None, 0.2, 1.0)]
    ]
    rows = [Row([1, 2, 3], c, seed=5) for c in cfgs]
    e = Engine(model, 4, length=64)
    ids = [e.submit(r) for r in rows]
    together = {f.id: f.tokens for f in e.run()}
    e.close()
    assert [together[i] for i in ids] == [run_alone(model, r, 4, 64) for r in rows]


def test_min_new_tokens_masks_the_stop_tokens_until_then():
    model = tiny(10, context=64)
    eos = int(model(torch.tensor([[1]]))[0, -1].argmax())  # the model's favourite: stops at once without the floor
    short = generate(model, [[1]], SamplingConfig(max_new_tokens=20, temperature=0, stop_tokens=(eos,)))
    assert short.tokens == [[]] and short.stopped == [True]
    floor = generate(model, [[1]], SamplingConfig(max_new_tokens=20, temperature=0, stop_tokens=(eos,), min_new_tokens=6))
    assert len(floor.tokens[0]) >= 6 and eos not in floor.tokens[0][:6]


def test_a_constraint_mask_of_another_dtype_is_taken():
    model = tiny(20, context=64)

    def as_ints(rows):  # 0/1 integers instead of booleans
        mask = torch.zeros(len(rows), 20, dtype=torch.int64)
        mask[:, 5:8] = 1
        return mask

    out = generate(model, [[1], [2, 3]], SamplingConfig(max_new_tokens=10, temperature=1.0, seed=0), constraint=as_ints).tokens
    assert {t for row in out for t in row} <= {5, 6, 7}


def pad_loving(vocab: int, seed: int = 0):
    """A model whose favourite next token is always 0, the pad id (its logit raised far above the others)."""
    model = tiny(vocab, context=64, seed=seed)
    bias = torch.zeros(vocab)
    bias[0] = 50.0
    model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    return model


@pytest.mark.parametrize("proposer", ["none", "ngram", "draft"])
def test_the_pad_id_is_never_sampled(proposer):
    """Padding is not a token of any sample: masked for every row (greedy, sampled, penalised, speculative)."""
    model = pad_loving(20)
    spec = {"none": None, "ngram": NGram(), "draft": DraftModel(pad_loving(20, seed=3))}[proposer]
    cfgs = [GREEDY, SAMPLED, SamplingConfig(max_new_tokens=30, temperature=1.0, repetition_penalty=1.3, min_new_tokens=4)]
    for cfg in cfgs:
        speculative = Speculative(spec) if spec is not None else None
        out = generate(model, [[1, 5, 7], [1], [4, 4, 4, 4]], cfg, seeds=[1, 2, 3], speculative=speculative)
        assert all(len(t) == 30 for t in out.tokens), cfg
        assert all(0 not in t for t in out.tokens), cfg


def test_the_pad_id_is_taken_where_it_stops_the_row():
    model = pad_loving(20)
    stops_on_pad = generate(model, [[1, 5]], SamplingConfig(max_new_tokens=10, temperature=0, stop_tokens=(0,)))
    assert stops_on_pad.tokens == [[]] and stops_on_pad.stopped == [True]
    other_pad = run_alone(model, Row([1, 5], GREEDY), 2, 64, pad_id=3)  # 0 is no pad here: the model's favourite
    assert other_pad == [0] * 30
    with pytest.raises(ValueError, match="pad_id 20"):
        Engine(model, 2, pad_id=20)


def test_non_finite_logits_end_the_row_with_one_line():
    model = tiny(20, context=64)
    with torch.no_grad():
        model.lm_head.weight[3] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        generate(model, [[1]], SamplingConfig(max_new_tokens=5))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(seed="7"), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(min_new_tokens=-1), "min_new_tokens"),
    ],
)
def test_bad_settings_name_the_option(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**bad)


def test_bad_requests_are_one_line():
    model = tiny(20, context=16)
    with pytest.raises(ValueError, match="unknown option 'temprature'"):
        generate(model, [[1]], GREEDY, temprature=0.5)
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(model, [list(range(1, 18))], GREEDY)
    with pytest.raises(ValueError, match="at least one token"):
        Engine(model, 2).submit(Row([], GREEDY))
    with pytest.raises(ValueError, match="needs 2 slots"):
        Engine(model, 1).submit(Row([1], SamplingConfig(guidance=2), guide=[1]))
    with pytest.raises(ValueError, match="does not guide"):
        Engine(model, 2, speculative=Speculative(NGram())).submit(Row([1], SamplingConfig(guidance=2), guide=[1]))
