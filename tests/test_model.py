import pytest
import torch
import torch.nn.functional as F

from arseq.decode import SamplingConfig, generate, process_logits
from arseq.decode.logits import Params
from arseq.models import Transformer, TransformerConfig, sequence_nll
from arseq.models.scoring import chunk_sequences


@pytest.fixture
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=50, max_seq_len=48, n_layer=2, n_head=4, d_model=32)).eval()


def params(**cfg) -> Params:
    return Params.of([SamplingConfig(**cfg)], 4, torch.device("cpu"))


def recompute_greedy(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq[-model.cfg.max_seq_len :]]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_cached_logits_match_full_pass(model):
    x = torch.randint(0, 50, (3, 40))
    full = model(x)
    model.setup_cache(3)
    at = lambda a, b: torch.arange(a, b).expand(3, b - a)  # noqa: E731
    steps = [model(x[:, :25], pos=at(0, 25))] + [model(x[:, t : t + 1], pos=at(t, t + 1)) for t in range(25, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_batched_left_padded_prompts_match_single_rows_and_recompute(model):
    prompts = [[5, 6, 7, 8, 9, 10], [1, 2], [3]]
    batched = generate(model, prompts, SamplingConfig(max_new_tokens=20, temperature=0)).tokens
    for p, out in zip(prompts, batched):
        assert out == generate(model, [p], SamplingConfig(max_new_tokens=20, temperature=0)).tokens[0]
        assert out == recompute_greedy(model, p, 20)


def test_generation_past_the_context_slides(model):
    out = generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=120, temperature=0.8, seed=3)).tokens[0]
    assert len(out) == 120


def test_top_k_one_is_greedy(model):
    greedy = generate(model, [[4, 2]], SamplingConfig(max_new_tokens=15, temperature=0)).tokens
    topk1 = generate(model, [[4, 2]], SamplingConfig(max_new_tokens=15, temperature=1.3, top_k=1, seed=9)).tokens
    assert greedy == topk1


def test_same_seed_same_sample_other_seed_other_sample(model):
    cfg = lambda s: SamplingConfig(max_new_tokens=30, temperature=1.0, seed=s)  # noqa: E731
    a, b, c = (generate(model, [[1]] * 2, cfg(s)).tokens for s in (11, 11, 12))
    assert a == b and a != c


def test_top_p_drops_the_tail_and_min_p_drops_the_unlikely():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = process_logits(logits, params(top_p=0.7), None, None).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = process_logits(logits, params(min_p=0.25), None, None).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 2.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = process_logits(logits, params(repetition_penalty=2.0, temperature=0), seen, None)
    assert out.tolist() == [[1.0, -2.0, 2.0, -1.0]]


def test_constraint_and_stop_token(model):
    eos, banned = 2, {7, 8, 9}

    def constraint(rows):
        allowed = torch.ones(len(rows), 50, dtype=torch.bool)
        allowed[:, sorted(banned)] = False
        for i, row in enumerate(rows):
            allowed[i, eos] = len(row) >= 6  # EOS only from the fifth generated token on
            if len(row) >= 6:
                allowed[i] = False
                allowed[i, eos] = True
        return allowed

    gen = generate(model, [[1], [1]], SamplingConfig(max_new_tokens=40, seed=0, stop_tokens=(eos,)), constraint=constraint)
    assert gen.stopped == [True, True]
    assert [len(t) for t in gen.tokens] == [5, 5]
    assert not banned & {t for row in gen.tokens for t in row}


def test_a_constraint_that_allows_nothing_ends_the_row_instead_of_failing(model):
    def constraint(rows):  # a dead end after three tokens in the row that starts with 1 only
        allowed = torch.ones(len(rows), 50, dtype=torch.bool)
        allowed[:, 2] = False
        for i, row in enumerate(rows):
            if row[0] == 1 and len(row) >= 4:
                allowed[i] = False
        return allowed

    gen = generate(model, [[1], [3]], SamplingConfig(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=0, stop_tokens=(2,)), constraint=constraint)
    assert gen.stopped == [True, False] and len(gen.tokens[0]) == 3 and len(gen.tokens[1]) == 8


def test_sequence_nll_counts_every_token_once_and_matches_direct_loss(model):
    seq = torch.randint(0, 50, (1, 30))
    nll, count = sequence_nll(model, [seq[0].tolist()])
    direct = F.cross_entropy(model(seq[:, :-1])[0], seq[0, 1:], reduction="sum")
    assert count[0] == 29 and abs(nll[0] - direct.item()) < 1e-3
    long = torch.randint(0, 50, (130,)).tolist()  # longer than the context: chunked
    assert sequence_nll(model, [long])[1][0] == 129
    assert sequence_nll(model, [long], start=[100])[1][0] == 30


@pytest.mark.parametrize("stride", [48, 24, 7])
def test_strided_windows_score_each_token_once_with_enough_context(model, stride):
    seqs = [torch.randint(0, 50, (n,)).tolist() for n in (1, 2, 49, 50, 130)]
    for start in (None, [1, 1, 10, 60, 100]):
        chunks = chunk_sequences(seqs, 48, start, stride)
        scored = {i: [] for i in range(len(seqs))}
        for i, lo, piece in chunks:
            c0 = next(c for c in range(0, len(seqs[i]), stride) if seqs[i][c : c + len(piece)] == piece.tolist())
            assert lo >= 1 and lo < len(piece) <= 49
            assert c0 == 0 or lo >= 48 - stride + 1  # past the first window: >= context - stride tokens of context
            scored[i] += range(c0 + lo, c0 + len(piece))
        for i, s in enumerate(seqs):
            first = max(1, start[i]) if start else 1
            assert scored[i] == list(range(first, len(s)))
    # a sequence that fits the context scores the same whatever the stride
    fits = [seqs[2]]  # 49 tokens: 48 predictions, one window
    torch.testing.assert_close(sequence_nll(model, fits, stride=stride)[0], sequence_nll(model, fits)[0])


def test_prompt_longer_than_context_is_refused(model):
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(model, [list(range(49))], SamplingConfig(max_new_tokens=2))
