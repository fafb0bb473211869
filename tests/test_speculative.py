"""Speculative decoding (arseq.decode.speculative): greedy output is plain greedy decoding's token for
token (batches, left padding, sliding windows, every modality's constraint); sampled tokens follow the
target's exact distribution (chi-square, with a deliberately bad draft); constraints follow rows cut back."""

from __future__ import annotations

import copy
import itertools
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from arseq.decode import DraftModel, NGram, SamplingConfig, Speculative, generate, process_logits
from arseq.decode.logits import Params
from arseq.decode.ngram import lookup
from arseq.models import Transformer, TransformerConfig

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "arseq-dna"


def tiny(vocab: int, context: int = 64, layers: int = 2, width: int = 32, seed: int = 0, scale: float = 0.5) -> Transformer:
    """Random weights, large enough to give peaked (deterministic-looking, repetitive) distributions."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=vocab, max_seq_len=context, n_layer=layers, n_head=2, d_model=width))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model.eval()


PROMPTS = [[1, 2, 3, 4, 5, 6], [1], [1, 7, 7]]  # rows of different lengths


def speculative_generate(target: Transformer, prompts: list[list[int]], cfg: SamplingConfig, proposer, k: int = 4, **options):
    return generate(target, prompts, cfg, speculative=Speculative(proposer, k), **options)


def proposers(target: Transformer) -> dict[str, DraftModel | NGram]:
    return {
        "draft": DraftModel(tiny(target.cfg.vocab_size, target.cfg.max_seq_len, 1, 16, seed=5)),
        "same": DraftModel(copy.deepcopy(target)),
        "ngram": NGram(),
    }


@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_equals_plain_greedy_in_batches_of_rows_of_any_length(k, penalty):
    target = tiny(20)
    cfg = SamplingConfig(max_new_tokens=40, temperature=0, repetition_penalty=penalty, stop_tokens=(3,))
    plain = generate(target, PROMPTS, cfg)
    alone = [generate(target, [p], cfg).tokens[0] for p in PROMPTS]
    assert plain.tokens == alone  # no slide within the context: plain batches are exact too
    for name, proposer in proposers(target).items():
        spec = speculative_generate(target, PROMPTS, cfg, proposer, k=k)
        assert spec.tokens == plain.tokens, name
        assert spec.stopped == plain.stopped, name
        assert spec.stats.tokens == sum(len(t) + s for t, s in zip(spec.tokens, spec.stopped))


def test_min_new_tokens_with_proposals_equals_plain_decoding():
    """The stop tokens are masked at the positions before the floor only (a verify pass spans both sides)."""
    target = tiny(20)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0, min_new_tokens=2, stop_tokens=(3,))
    plain = generate(target, PROMPTS, cfg)
    for name, proposer in proposers(target).items():
        assert speculative_generate(target, PROMPTS, cfg, proposer).tokens == plain.tokens, name


def test_acceptance_is_reported():
    target = tiny(20)
    cfg = SamplingConfig(max_new_tokens=30, temperature=0)
    same = speculative_generate(target, [[1, 2]], cfg, DraftModel(copy.deepcopy(target)), k=4).stats.as_dict()
    assert same["acceptance_rate"] == 1.0 and same["tokens_per_target_pass"] > 4  # a perfect draft: K + 1 per pass
    bad = speculative_generate(target, [[1, 2]], cfg, DraftModel(tiny(20, layers=1, width=16, seed=9)), k=4).stats.as_dict()
    assert bad["acceptance_rate"] < 0.5 and bad["tokens"] == 30 and bad["tokens_per_s"] > 0


def test_past_the_context_a_row_slides_as_if_alone():
    """A row reaching the context slides to its newest half exactly as plain generate does for one row."""
    target = tiny(20, context=24)
    cfg = SamplingConfig(max_new_tokens=70, temperature=0)
    alone = [generate(target, [p], cfg).tokens[0] for p in PROMPTS]
    small_draft = DraftModel(tiny(20, context=12, layers=1, width=16, seed=5))  # slides on its own, more often
    for proposer in (small_draft, DraftModel(copy.deepcopy(target)), NGram()):
        assert speculative_generate(target, PROMPTS, cfg, proposer, k=3).tokens == alone


def test_a_slide_keeps_the_head_as_plain_decoding_does():
    """With `head` (a conditioned prompt's BOS and controls), a row that slides keeps them in front, as plain
    generate does for that row alone."""
    target = tiny(20, context=24)
    cfg = SamplingConfig(max_new_tokens=70, temperature=0)
    prompts = [[1, 7, 8, 3], [1, 9, 9], [2, 5, 6, 7, 1]]
    alone = [generate(target, [p], cfg, head=3).tokens[0] for p in prompts]
    assert alone != [generate(target, [p], cfg).tokens[0] for p in prompts]
    for proposer in (DraftModel(tiny(20, context=12, layers=1, width=16, seed=5)), DraftModel(copy.deepcopy(target)), NGram()):
        assert speculative_generate(target, prompts, cfg, proposer, k=3, head=3).tokens == alone


def test_compiled_passes_give_plain_greedy_output_and_are_built_once():
    """--compile: the one-token and (k+1)-token passes compiled (shorter feeds padded to k+1), the same tokens as
    plain greedy decoding in a batch that slides; a second run reuses them."""
    from arseq.decode.slots import cached_pass
    from arseq.models import inference

    target = tiny(20, context=24)
    cfg = SamplingConfig(max_new_tokens=50, temperature=0)
    alone = [generate(target, [p], cfg).tokens[0] for p in PROMPTS]
    draft = DraftModel(tiny(20, context=24, layers=1, width=16, seed=5))
    for proposer in (draft, NGram()):
        assert speculative_generate(target, PROMPTS, cfg, proposer, k=3, compile=True).tokens == alone
    built = {key: entry for key, entry in inference._COMPILED[target].items() if key[0] is cached_pass}
    assert len(built) == 1 and all(step.fn is not None for step, _ in built.values())  # one (batch, slots) entry, used
    assert speculative_generate(target, PROMPTS, cfg, NGram(), k=3, compile=True).tokens == alone
    assert {key: entry for key, entry in inference._COMPILED[target].items() if key[0] is cached_pass} == built


def test_draft_must_share_the_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(tiny(20), [[1]], SamplingConfig(max_new_tokens=3), DraftModel(tiny(21)))
    target = tiny(20)
    with pytest.raises(ValueError, match="another model"):
        speculative_generate(target, [[1]], SamplingConfig(max_new_tokens=3), DraftModel(target))


def test_ngram_lookup():
    assert lookup([1, 2, 3, 4, 1, 2, 3], 3) == [4, 1, 2]
    assert lookup([1, 2, 3, 9, 2, 3, 5, 2, 3], 2) == [5, 2]  # the latest of the longest matches
    assert lookup([5, 6, 7], 3) == [] and lookup([4, 2, 5, 2], 3, min_n=2) == []


# ---- exactness when sampling --------------------------------------------------------------------
def exact_joint(model: Transformer, prompt: list[int], steps: int, cfg: SamplingConfig) -> dict[tuple[int, ...], float]:
    """P(t1..t_steps) under `model` with cfg's processing, by enumerating every continuation (the pad id,
    0, masked: no sample takes it)."""
    V, probs = model.cfg.vocab_size, {}
    takeable = torch.ones(1, V, dtype=torch.bool)
    takeable[0, 0] = False
    for seq in itertools.product(range(V), repeat=steps):
        p = 1.0
        for j in range(steps):
            prefix = prompt + list(seq[:j])
            logits = model(torch.tensor([prefix]))[:, -1]
            seen = torch.zeros(1, V, dtype=torch.bool)
            seen[0, prefix] = True
            p *= float(process_logits(logits, Params.of([cfg], V, logits.device), seen, takeable).softmax(-1)[0, seq[j]])
            if p == 0:
                break
        probs[seq] = p
    return probs


def chi2_pvalue(samples: list[list[int]], probs: dict[tuple[int, ...], float]) -> float:
    n = len(samples)
    counts = {key: 0 for key in probs}
    for s in samples:
        counts[tuple(s)] += 1
    big = [key for key in probs if probs[key] * n >= 5]
    observed = [counts[key] for key in big] + [n - sum(counts[key] for key in big)]
    expected = [probs[key] * n for key in big] + [n - sum(probs[key] * n for key in big)]
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("proposer", ["draft", "ngram"])
@torch.inference_mode()
def test_sampled_tokens_follow_the_targets_distribution(proposer):
    """4000 samples of three tokens (one per seed) against the target's exact joint distribution; the
    draft's own samples, the same test's negative control, fail it by a mile."""
    target = tiny(5, context=16, scale=0.35, seed=1)
    bad = tiny(5, context=16, layers=1, width=16, scale=0.6, seed=2)  # a very different distribution
    cfg = SamplingConfig(max_new_tokens=3, temperature=0.9, top_k=4, repetition_penalty=1.2)
    prompt, n = [1, 3, 2, 3], 4000
    probs = exact_joint(target, prompt, 3, cfg)
    chosen = DraftModel(bad) if proposer == "draft" else NGram(n=2, min_n=1)
    spec = speculative_generate(target, [prompt] * n, cfg, chosen, k=2, seeds=list(range(n)))
    assert all(len(t) == 3 for t in spec.tokens)
    assert 0.05 < spec.stats.accepted / spec.stats.proposed < 0.95  # both accept and reject paths are exercised
    assert chi2_pvalue(spec.tokens, probs) > 1e-3
    if proposer == "draft":
        own = generate(bad, [prompt] * n, cfg, seeds=list(range(n))).tokens
        assert chi2_pvalue(own, probs) < 1e-6


# ---- constraints --------------------------------------------------------------------------------
def music_case():
    from arseq.modalities.music.grammar import GrammarConstraint
    from arseq.tokenizers.score import ScoreTokenizer

    tok = ScoreTokenizer()
    return tok, lambda: GrammarConstraint(tok, bars=2), [[tok.bos_id]]


def music_landing_case():
    """No --bars, a budget that lands rows 20 tokens in: a target set part-way, which rows cut back cross."""
    from arseq.modalities.music.grammar import LANDING_TOKENS, GrammarConstraint
    from arseq.tokenizers.score import ScoreTokenizer

    tok = ScoreTokenizer()
    return tok, lambda: GrammarConstraint(tok, None, 1, budget=LANDING_TOKENS + 20), [[tok.bos_id]]


def protein_case():
    from arseq.modalities import Request
    from arseq.modalities.protein import ProteinGenerate, ProteinModality

    m = ProteinModality()
    tok = m.build_tokenizer([], None)
    plan = m.plan(tok, Request(2, options=ProteinGenerate(min_length=4, max_length=12, standard_only=True)))
    return tok, plan.constraint, [[tok.bos_id], [tok.bos_id, *tok.encode("MKT")]]


def image_case():
    from arseq.modalities import Request
    from arseq.modalities.image import ImageGenerate, ImageModality
    from arseq.tokenizers.patch import PatchTokenizer

    tok = PatchTokenizer([[0, 0, 0], [9, 9, 9], [200, 0, 0]], size=4, patch_size=1, mode="RGB")
    return tok, ImageModality().plan(tok, Request(1, options=ImageGenerate())).constraint, [[tok.bos_id]]


def dna_case():
    sys.path.insert(0, str(EXAMPLE))
    from arseq_dna.modality import DnaModality

    m = DnaModality(kmer=2)
    tok = m.build_tokenizer([], None)
    return tok, lambda: m.constraint(tok, 15), [[tok.bos_id], [tok.bos_id, *tok.encode("ACG")]]


CASES = {"music": music_case, "music_landing": music_landing_case, "protein": protein_case, "image": image_case, "dna": dna_case}


def broken_tokens(make, prompt: list[int], tokens: list[int]) -> int:
    """Tokens a fresh constraint, fed the sequence as plain sampling would, does not allow."""
    constraint, row, bad = make(), list(prompt), 0
    for t in tokens:
        bad += not bool(constraint([row])[0, t])
        row.append(t)
    return bad


@pytest.mark.parametrize("name", sorted(CASES))
def test_constraints_greedy_equal_and_samples_well_formed(name):
    tok, make, prompts = CASES[name]()
    target = tiny(tok.vocab_size, context=128, scale=0.3)
    greedy = SamplingConfig(max_new_tokens=60, temperature=0, stop_tokens=(tok.eos_id,))
    plain = generate(target, prompts, greedy, pad_id=tok.pad_id, constraint=make())
    draft = DraftModel(tiny(tok.vocab_size, context=128, layers=1, width=16, scale=0.3, seed=3))
    for proposer in (draft, NGram()):
        spec = speculative_generate(target, prompts, greedy, proposer, k=4, pad_id=tok.pad_id, constraint=make())
        assert spec.tokens == plain.tokens and spec.stopped == plain.stopped
    sampled = SamplingConfig(max_new_tokens=60, temperature=1.0, stop_tokens=(tok.eos_id,))
    seeds = list(range(6))
    rows = [prompts[i % len(prompts)] for i in seeds]
    spec = speculative_generate(target, rows, sampled, draft, k=4, pad_id=tok.pad_id, constraint=make(), seeds=seeds)
    assert spec.stats.accepted < spec.stats.proposed  # rows were cut back
    for prompt, tokens, stopped in zip(rows, spec.tokens, spec.stopped):
        assert broken_tokens(make, prompt, tokens + ([tok.eos_id] if stopped else [])) == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_stateful_constraints_roll_back(name):
    """Grow a row, cut it back, grow it otherwise: every mask equals a fresh constraint's on that row."""
    tok, make, prompts = CASES[name]()
    target = tiny(tok.vocab_size, context=128, scale=0.3)
    cfg = SamplingConfig(max_new_tokens=40, temperature=1.0, seed=0)
    a = generate(target, [prompts[-1]], cfg, pad_id=tok.pad_id, constraint=make()).tokens[0]
    b = generate(target, [prompts[-1]], SamplingConfig(max_new_tokens=40, temperature=1.0, seed=1), pad_id=tok.pad_id, constraint=make()).tokens[0]
    prompt = list(prompts[-1])
    constraint, row = make(), list(prompt)

    def fresh() -> torch.Tensor:  # a new constraint that saw the prompt first (music counts bars from there), then the row
        other, grown = make(), list(prompt)
        other([grown])
        grown += row[len(prompt) :]
        return other([grown])

    schedule = [(a, 30), (None, 12), (b, 25), (None, 3), (a, 40)]  # (tokens to append, or None: cut back by n)
    for tokens, n in schedule:
        if tokens is None:
            del row[len(row) - n :]
            assert torch.equal(constraint([row]), fresh())
            continue
        for t in tokens[:n]:
            if not bool(constraint([row])[0, t]):
                break  # a token of the other sample that does not fit here: stop growing
            row.append(t)
            assert torch.equal(constraint([row]), fresh())


def test_prefix_counts_follow_rows_cut_back():
    from arseq.modalities import PrefixCounts

    counts, row = PrefixCounts([0, 1, 2, 3], skip=1), [3]
    assert counts(row) == 0
    row += [1, 2, 3]
    assert counts(row) == 6
    del row[2:]
    assert counts(row) == 1
    row += [3, 3]
    assert counts(row) == 7
    assert counts([3, 3]) == 3  # another list: counted afresh


# ---- command line and Python API ----------------------------------------------------------------
def test_cli_draft_gives_plain_greedy_output_and_reports(trained, tmp_path, capsys):
    import json

    from arseq.api import load
    from arseq.artifacts import checkpoint
    from arseq.cli import main

    ckpt = str(trained / "checkpoints" / "last.ckpt")
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "draft")]) == 0  # an export works as a draft
    capsys.readouterr()
    base = ["generate", "--checkpoint", ckpt, "--prompt", "the ", "--temperature", "0", "--max-new-tokens", "40"]
    outs = {}
    for name, extra in {
        "plain": [],
        "draft": ["--draft", str(tmp_path / "draft"), "--draft-tokens", "3"],
        "ngram": ["--draft", "ngram", "--ngram", "2"],
    }.items():
        assert main(base + extra) == 0
        outs[name], err = capsys.readouterr()
        assert ("speculative: acceptance" in err) == (name != "plain")
    assert outs["draft"] == outs["plain"] == outs["ngram"]
    assert main(["evaluate", "--checkpoint", ckpt, "--num-samples", "2", "--max-new-tokens", "20", "--draft", "ngram"]) == 0
    report = json.loads(capsys.readouterr().out)["speculative"]
    assert report["draft"] == "ngram" and {"acceptance_rate", "tokens_per_target_pass", "tokens_per_s"} <= set(report)
    model = load(ckpt)
    a = model.generate(2, draft=str(tmp_path / "draft"), temperature=0, max_new_tokens=15, prompt="the ")
    b = model.generate(2, temperature=0, max_new_tokens=15, prompt="the ")
    assert [s.tokens for s in a] == [s.tokens for s in b]
    # a draft with another tokenizer (same size, one character replaced): one line, exit code 2
    state = json.loads((tmp_path / "draft" / "tokenizer.json").read_text())
    other = next(c for c in "~^|#@" if c not in state["chars"])
    (tmp_path / "draft" / "tokenizer.json").write_text(json.dumps({**state, "chars": state["chars"][:-1] + other}))
    assert checkpoint.load(tmp_path / "draft").tokenizer.vocab_size == model.loaded.tokenizer.vocab_size
    capsys.readouterr()
    assert main(base + ["--draft", str(tmp_path / "draft")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--draft" in err and "tokenizer differs" in err


def test_ngram_gives_up_below_the_break_even_of_compiled_cpu_passes(monkeypatch):
    """Proposals that yield 2 tokens per pass: worth it eagerly (break-even 1.15), not when compiled on a CPU, where
    a verify pass costs 2.4-3.2 one-token passes (break-even 2.5); same output either way."""
    import arseq.decode.speculative as spec_module

    target = tiny(20, context=128)

    def favourite(tokens):  # the model's next token (the pad id, 0, is never taken)
        logits = target(torch.tensor([tokens]))[0, -1]
        logits[0] = float("-inf")
        return int(logits.argmax())

    def half_right(tokens, k, n, min_n):  # the model's next token, then a wrong one
        right = favourite(tokens)
        return [right, (favourite(tokens + [right]) + 1) % 20][:k]

    monkeypatch.setattr(spec_module, "lookup", half_right)
    cfg = SamplingConfig(max_new_tokens=100, temperature=0)
    plain = generate(target, [[1, 2, 3]], cfg).tokens
    eager = speculative_generate(target, [[1, 2, 3]], cfg, NGram(), k=4)
    compiled = speculative_generate(target, [[1, 2, 3]], cfg, NGram(), k=4, compile=True)
    assert eager.tokens == compiled.tokens == plain
    assert eager.stats.tokens / eager.stats.target_passes == pytest.approx(2, abs=0.1)  # kept on proposing
    assert compiled.stats.proposed < 24 and eager.stats.proposed > 40  # compiled: gave up after 16 tokens


def test_failing_ngram_proposals_fall_back_to_plain_decoding(monkeypatch):
    """Proposals that are always wrong: after 32 tokens the row stops proposing (plain decoding), same output."""
    import arseq.decode.speculative as spec_module

    target = tiny(20, context=128)
    wrong = lambda tokens, k, n, min_n: [
        (tokens[-1] + 1) % 20 if target(torch.tensor([tokens]))[0, -1].argmax() != (tokens[-1] + 1) % 20 else (tokens[-1] + 2) % 20
    ]  # noqa: E731
    monkeypatch.setattr(spec_module, "lookup", wrong)
    cfg = SamplingConfig(max_new_tokens=100, temperature=0)
    streamed: list[int] = []
    spec = speculative_generate(target, [[1, 2, 3]], cfg, NGram(), k=4, on_token=lambda row, t, done: streamed.append(t))
    assert spec.tokens == generate(target, [[1, 2, 3]], cfg).tokens
    assert spec.stats.accepted == 0 and spec.stats.proposed < 64  # gave up on proposing early
    assert streamed == spec.tokens[0]  # every token streamed once, in order
    short = tiny(20, context=24)  # past a slide
    monkeypatch.setattr(spec_module, "lookup", lambda tokens, k, n, min_n: [(tokens[-1] + 7) % 20])
    spec = speculative_generate(short, [[1, 2, 3]], cfg, NGram(), k=4)
    assert spec.tokens == generate(short, [[1, 2, 3]], cfg).tokens and spec.stats.proposed < 64


def test_sampled_rounds_without_proposals_draw_what_plain_decoding_draws(monkeypatch):
    """A round in which no row proposes is a plain step: the same sampled tokens from the same random streams,
    and rows that propose and rows that do not (or no longer) share rounds without changing each other's tokens."""
    import arseq.decode.speculative as spec_module

    target = tiny(30, context=48)  # rows slide too
    cfg = SamplingConfig(max_new_tokens=80, temperature=1.0, seed=3)
    plain = generate(target, PROMPTS, cfg).tokens
    monkeypatch.setattr(spec_module, "lookup", lambda tokens, k, n, min_n: [])
    spec = speculative_generate(target, PROMPTS, cfg, NGram(), k=4)
    assert spec.tokens == plain and spec.stats.proposed == 0 and spec.stats.target_passes == sum(len(t) for t in plain)
    # the first row proposes (always wrong, until it gives up); the others never do: theirs are still plain's tokens
    monkeypatch.setattr(spec_module, "lookup", lambda tokens, k, n, min_n: [29] if tokens[:6] == PROMPTS[0] else [])
    mixed = speculative_generate(target, PROMPTS, cfg, NGram(), k=4)
    assert mixed.stats.proposed > 0 and mixed.tokens[1:] == plain[1:]
