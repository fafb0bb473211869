"""Music length control: `--bars N` gives exactly N new bars; without it a sample does not end before
`min_bars` new bars (the shortest training chorales), even from a model that would rather stop at once, and
one still writing near its token budget ends at a bar line rather than being cut there."""

from __future__ import annotations

import torch
from test_speculative import tiny

from arseq.decode import SamplingConfig, generate
from arseq.modalities.music.grammar import LANDING_TOKENS, GrammarConstraint
from arseq.tokenizers.score import ScoreTokenizer

TOK = ScoreTokenizer()


def eager_to_stop(sign: float = 1.0):
    """A random model whose EOS logit is raised (sign -1: lowered): left alone it ends as soon as the grammar
    lets it (never)."""
    model = tiny(TOK.vocab_size, context=512, scale=0.3, seed=2)
    with torch.no_grad():
        model.lm_head.weight[TOK.eos_id] *= 0
        model.lm_head.weight[TOK.eos_id] += model.norm.weight.sign() * 3.0 * sign
    return model


def bars_of(tokens: list[int]) -> int:
    return len(TOK.decode_events([TOK.bos_id, *tokens]).bars)


def test_bars_gives_exactly_that_many_new_bars():
    model = eager_to_stop()
    cfg = SamplingConfig(max_new_tokens=2000, temperature=1.0, stop_tokens=(TOK.eos_id,))
    for n in (1, 3):
        gen = generate(model, [[TOK.bos_id]] * 4, cfg, constraint=GrammarConstraint(TOK, n, n), seeds=list(range(4)))
        assert all(gen.stopped)
        assert [bars_of(t) for t in gen.tokens] == [n] * 4


def test_min_bars_keeps_samples_from_ending_early():
    model = eager_to_stop()
    cfg = SamplingConfig(max_new_tokens=2000, temperature=1.0, stop_tokens=(TOK.eos_id,))
    free = generate(model, [[TOK.bos_id]] * 4, cfg, constraint=GrammarConstraint(TOK), seeds=list(range(4)))
    assert min(bars_of(t) for t in free.tokens) < 4  # the test is not vacuous: this model stops early
    held = generate(model, [[TOK.bos_id]] * 4, cfg, constraint=GrammarConstraint(TOK, None, 4), seeds=list(range(4)))
    assert all(held.stopped) and min(bars_of(t) for t in held.tokens) >= 4


def test_a_sample_near_its_budget_ends_at_a_bar_line():
    model, budget = eager_to_stop(-1.0), LANDING_TOKENS + 150
    cfg = SamplingConfig(max_new_tokens=budget, temperature=1.0, stop_tokens=(TOK.eos_id,))
    seeds = list(range(4))
    cut = generate(model, [[TOK.bos_id]] * 4, cfg, constraint=GrammarConstraint(TOK, None, 1), seeds=seeds)
    assert not any(cut.stopped)  # the test is not vacuous: this model runs into its budget
    landed = generate(model, [[TOK.bos_id]] * 4, cfg, constraint=GrammarConstraint(TOK, None, 1, budget), seeds=seeds)
    assert all(landed.stopped)
    for tokens, before in zip(landed.tokens, cut.tokens):
        assert tokens[:150] == before[:150]  # the same sample until it lands
        opened = tokens[:150].count(TOK.bar_id)  # the bars it had opened LANDING_TOKENS before its budget
        events = TOK.decode_events([TOK.bos_id, *tokens, TOK.eos_id])
        assert events.repairs == 0 and len(events.bars) >= opened
        last = events.bars[opened - 1]  # later bars only let notes held over it end (this model changes meter at will)
        assert max(n.onset for n in events.notes) < last.start + last.length
