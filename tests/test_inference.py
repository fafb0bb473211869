"""Fast inference: static-shape decode (same tokens as full passes), the compiled decode step, int8
weights and their export, --dtype, and one-line errors for bad --compile/--quantize/--dtype values."""

import copy
import json
import logging

import pytest
import torch

from arseq.artifacts import checkpoint
from arseq.cli import main
from arseq.decode import SamplingConfig, generate
from arseq.models import Transformer, TransformerConfig, inference
from arseq.models.inference import prepare_for_inference, resolve_dtype
from arseq.models.quantize import Int8Embedding, Int8Linear, quantize_model

GREEDY = SamplingConfig(max_new_tokens=70, temperature=0)  # 70 > context 48: slides once


@pytest.fixture
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=50, max_seq_len=48, n_layer=2, n_head=4, d_model=32)).eval()


def reference_greedy(model, prompts, n, head=0):
    """The sliding-window decode in plain full passes, row by row: a row whose window outgrows the context
    keeps its first `head` tokens and its newest, half the context in all. The pad id (0) is never taken."""
    context, keep, out = model.cfg.max_seq_len, model.cfg.max_seq_len // 2, []
    for p in prompts:
        seq, start = list(p), head
        for _ in range(n):
            if head + len(seq) - start > context:
                start = len(seq) - (keep - head)
            logits = model(torch.tensor([seq[:head] + seq[start:]]))[0, -1]
            logits[0] = float("-inf")
            seq.append(int(logits.argmax()))
        out.append(seq[len(p) :])
    return out


def test_static_decode_matches_full_passes_for_rows_of_any_length_and_the_sliding_window(model):
    prompts = [[5, 6, 7, 8, 9, 10], [1, 2], [3]]
    assert generate(model, prompts, GREEDY).tokens == reference_greedy(model, prompts, GREEDY.max_new_tokens)


def test_a_slide_keeps_each_prompts_head_in_front_of_the_window(model):
    """`head`: a conditioned prompt's BOS and control tokens stay in the context past a slide."""
    with torch.no_grad():  # sharper weights: greedy output that does not repeat one token, so the head shows
        for p in model.parameters():
            p.mul_(3)
    prompts = [[5, 6, 7, 8, 9, 10], [1, 2, 3], [3, 4, 4]]
    out = generate(model, prompts, GREEDY, head=3)
    assert out.tokens == reference_greedy(model, prompts, GREEDY.max_new_tokens, head=3)
    assert out.tokens != generate(model, prompts, GREEDY).tokens  # the head changed what came after the slide
    assert generate(model, prompts, GREEDY, head=3, compile=True).tokens == out.tokens
    with pytest.raises(ValueError, match="head 4"):
        generate(model, prompts, GREEDY, head=4)  # longer than a prompt


def test_huge_max_new_tokens_allocates_only_what_is_generated(model):
    eos = 2

    def stop_after_three(rows):
        allowed = torch.zeros(len(rows), 50, dtype=torch.bool)
        for i, row in enumerate(rows):
            allowed[i, eos if len(row) >= 4 else 7] = True
        return allowed

    gen = generate(model, [[1], [4]], SamplingConfig(max_new_tokens=10**9, stop_tokens=(eos,)), constraint=stop_after_three)
    assert gen.tokens == [[7, 7, 7], [7, 7, 7]] and gen.stopped == [True, True]


def test_compiled_greedy_equals_eager_and_the_step_is_built_once(model):
    prompts = [[5, 6, 7, 8, 9, 10], [1, 2], [3]]
    eager = generate(model, prompts, GREEDY).tokens
    assert generate(model, prompts, GREEDY, compile=True).tokens == eager
    built = list(inference._COMPILED[model].values())
    assert len(built) == 2 and built[0][1] is built[1][1]  # the step and a sliding row's prefill, on the same buffers
    other = [[9, 9, 1], [4], [3, 3]]  # another batch of the same size: the same step and buffers
    assert generate(model, other, GREEDY, compile=True).tokens == generate(model, other, GREEDY).tokens
    assert list(inference._COMPILED[model].values()) == built


def test_a_step_over_a_span_equals_the_step_over_the_whole_cache():
    """Attention reads slots 0..span-1 (the engine's spans): the same logits as reading every slot, eager
    and compiled, and the same greedy tokens; a decode through several spans compiles one graph per span."""
    from arseq.decode.slots import cached_pass, spans

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, max_seq_len=256, n_layer=2, n_head=4, d_model=32)).eval()
    assert spans(256) == [64, 128, 256]
    model.setup_cache(3, 256)
    with torch.no_grad():
        model(torch.randint(1, 50, (3, 110)), pos=torch.arange(110).expand(3, 110))  # every row's slots 0..109
        tokens, pos = torch.randint(1, 50, (3, 1)), torch.tensor([[70], [5], [109]])
        full = model(tokens, pos=pos)
        part = model(tokens, pos=pos, span=128)
        step = torch.compile(cached_pass, dynamic=False, fullgraph=True)
        compiled_full, compiled_part = step(model, tokens, pos, 256), step(model, tokens, pos, 128)
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_part, compiled_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_part, full, rtol=1e-5, atol=1e-6)
    assert torch.equal(part.argmax(-1), full.argmax(-1)) and torch.equal(compiled_part.argmax(-1), full.argmax(-1))
    model.clear_cache()
    cfg = SamplingConfig(max_new_tokens=200, temperature=0)  # a cache of 211 slots, rows at positions 2 to 209
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]
    eager = generate(model, prompts, cfg).tokens
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert generate(model, prompts, cfg, compile=True).tokens == eager
    assert spans(211) == [64, 128, 211] and torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 3
    assert eager == [generate(model, [p], cfg).tokens[0] for p in prompts]  # alone: other spans, the same tokens


@pytest.mark.parametrize("rows", [1, 8, 40])
def test_compiled_linear_takes_the_fused_reduction_for_few_rows_and_equals_f_linear(rows, monkeypatch):
    from arseq.models import linear as linear_module

    taken = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(linear_module.F, "linear", lambda *a: taken.append(True) or real_linear(*a))
    torch.manual_seed(0)
    x, w = torch.randn(rows, 1, 48), torch.randn(24, 48)
    q, scale = torch.randint(-127, 128, (24, 48), dtype=torch.int8), torch.rand(24)
    fn = torch.compile(lambda x: (linear_module.linear(x, w), linear_module.linear(x, q) * scale), fullgraph=True)
    y, yq = fn(x)
    torch.testing.assert_close(y, real_linear(x, w), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(yq, real_linear(x, q.float()) * scale, rtol=1e-5, atol=1e-4)
    blas_here = linear_module.rule_route("cpu", torch.float32, False, rows, True) == "blas"  # float32 on AVX2: MKL
    assert bool(taken) == (rows > linear_module.FUSED_ROWS or blas_here)  # else decode-sized passes skip the GEMV


@pytest.mark.parametrize("queries", [1, 5, 40])
def test_compiled_attention_is_written_out_for_few_queries_and_equals_sdpa(queries, monkeypatch):
    from arseq.models import attention as attention_module

    taken = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", lambda *a, **k: taken.append(True) or real_sdpa(*a, **k))
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, queries, 8), torch.randn(2, 3, 50, 8), torch.randn(2, 3, 50, 8)
    mask = torch.rand(2, 1, queries, 50) < 0.6
    mask[..., 0] = True  # every query sees a slot
    y = torch.compile(lambda *a: attention_module.attention(*a, False, 0.0), fullgraph=True)(q, k, v, mask)
    torch.testing.assert_close(y, real_sdpa(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-5)
    assert bool(taken) == (queries > attention_module.FUSED_QUERIES)  # decode-sized passes skip the opaque kernel


def _broken_compile(*args, **kwargs):
    raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n  traceback line")


def test_compile_that_cannot_work_is_one_line_or_falls_back_with_auto(model, monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", _broken_compile)
    with pytest.raises(ValueError, match=r"^--compile: torch.compile does not work on cpu \(InvalidCxxCompiler") as e:
        generate(model, [[1, 2]], GREEDY, compile="on")
    assert "\n" not in str(e.value)
    with caplog.at_level(logging.WARNING, logger="arseq"):
        assert generate(model, [[1, 2]], GREEDY, compile="auto").tokens == generate(model, [[1, 2]], GREEDY).tokens
    err = [r.getMessage() for r in caplog.records]
    assert len(err) == 1 and err[0].startswith("warning: --compile auto:")


def test_a_later_graph_that_fails_to_compile_is_one_line_too(monkeypatch, caplog):
    """The speculative passes compile two shapes: the second failing after the first worked is no traceback."""

    def compile_once(fn, **kwargs):
        shapes = set()

        def run(*args):
            shapes.add(tuple(args[1].shape))
            if len(shapes) > 1:
                raise RuntimeError("CppCompileError: C++ compile error\n  long log")
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", compile_once)
    step = inference.Compiled(lambda m, x: x * 2, torch.device("cpu"), fallback=False)
    assert step(None, torch.ones(1, 1)).sum() == 2
    with pytest.raises(ValueError, match=r"^--compile: torch.compile does not work on cpu \(CppCompileError") as e:
        step(None, torch.ones(1, 5))
    assert "\n" not in str(e.value)
    auto = inference.Compiled(lambda m, x: x * 2, torch.device("cpu"), fallback=True)
    with caplog.at_level(logging.WARNING, logger="arseq"):
        assert auto(None, torch.ones(1, 1)).sum() == 2 and auto(None, torch.ones(1, 5)).sum() == 10  # eager from then on
    assert sum("warning: --compile auto:" in r.getMessage() for r in caplog.records) == 1


def test_int8_logits_are_close_and_greedy_mostly_equal(model):
    with torch.no_grad():  # a sharper model than the init, so that greedy choices are not coin flips
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(4.0)
    x = torch.randint(0, 50, (4, 40))
    full = model(x)
    q = quantize_model(copy.deepcopy(model), "int8")
    assert isinstance(q.embed, Int8Embedding) and isinstance(q.blocks[0].attn.qkv, Int8Linear)
    assert q.lm_head.weight is q.embed.weight and q.lm_head.weight.dtype == torch.int8  # tied: one int8 matrix
    got = q(x)
    assert ((got - full).norm() / full.norm()).item() < 0.02
    assert (got.argmax(-1) == full.argmax(-1)).float().mean().item() > 0.95
    a, b = generate(model, [[1, 2, 3]], GREEDY).tokens[0], generate(q, [[1, 2, 3]], GREEDY).tokens[0]
    assert sum(u == v for u, v in zip(a, b)) >= 0.5 * len(a)  # may drift apart after a first difference
    assert generate(q, [[1, 2, 3]], GREEDY, compile=True).tokens[0] == b  # the fused compiled path: same tokens


def test_bfloat16_decodes_and_bad_values_are_one_line(model, monkeypatch):
    from arseq.models import cpu_features  # play a CPU with bf16 arithmetic (without: test_linear_routes)

    monkeypatch.setattr(cpu_features, "FOUND", cpu_features.FOUND | {"avx512_bf16"})
    prepare_for_inference(model, "cpu", "bfloat16")
    assert model.norm.weight.dtype == torch.bfloat16
    assert len(generate(model, [[1, 2]], SamplingConfig(max_new_tokens=5, temperature=0)).tokens[0]) == 5
    assert resolve_dtype(None, torch.device("cpu")) is torch.float32
    for kwargs, flag in [({"dtype": "float64"}, "--dtype"), ({"quantize": "int4"}, "--quantize"), ({"compile": "yes"}, "--compile")]:
        with pytest.raises(ValueError, match=f"^{flag} must be one of"):
            prepare_for_inference(model, "cpu", **kwargs)


def test_quantized_export_is_4x_smaller_and_loads_directly(trained, tmp_path, capsys):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "f32")]) == 0
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "q8"), "--quantize", "int8"]) == 0
    ratio = (tmp_path / "f32" / "model.safetensors").stat().st_size / (tmp_path / "q8" / "model.safetensors").stat().st_size
    assert ratio > 3.3, ratio
    float_model, loaded = checkpoint.load(ckpt).model, checkpoint.load(tmp_path / "q8")
    assert loaded.model.lm_head.weight is loaded.model.embed.weight
    expected = quantize_model(float_model, "int8")
    x = torch.randint(3, float_model.cfg.vocab_size, (2, 20))
    assert torch.equal(loaded.model(x), expected(x))  # the file holds exactly the quantized weights
    capsys.readouterr()
    outs = []
    for source, flags in ((ckpt, ["--quantize", "int8"]), (str(tmp_path / "q8"), [])):
        assert main(["generate", "--checkpoint", source, "--temperature", "0", "--max-new-tokens", "30", *flags]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    config = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert config["format"] == 2 and config["quantization"] == "int8"
    config["quantization"] = "int4"
    (tmp_path / "q8" / "config.json").write_text(json.dumps(config))
    assert main(["generate", "--checkpoint", str(tmp_path / "q8")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quantization 'int4' is unknown" in err[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--quantize", "int4"], "--quantize: expected one of none, int8, got 'int4'"),
        (["--dtype", "float8"], "--dtype: expected one of float32, bfloat16, float16, got 'float8'"),
        (["--compile", "sometimes"], "--compile: expected one of off, on, auto or true or false, got 'sometimes'"),
    ],
)
def test_bad_inference_flags_are_one_line(trained, capsys, flags, message):
    code = main(["generate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_evaluate_int8_reports_a_close_perplexity(trained, capsys):
    ppl = []
    for flags in ([], ["--quantize", "int8"]):
        assert main(["evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), *flags]) == 0
        ppl.append(json.loads(capsys.readouterr().out)["perplexity"])
    assert ppl[0] != ppl[1] and abs(ppl[1] / ppl[0] - 1) < 0.02


def test_compiled_passes_of_many_models_each_keep_their_own_graphs():
    """More (model, shape) pairs than torch.compile's recompile limit (8) in one process: no hard failure."""
    cfg = SamplingConfig(max_new_tokens=3, temperature=0)
    for seed in range(9):
        torch.manual_seed(seed)
        m = Transformer(TransformerConfig(vocab_size=20, max_seq_len=32, n_layer=1, n_head=2, d_model=8 + 4 * seed)).eval()
        assert generate(m, [[1, 2]], cfg, compile=True).tokens == generate(m, [[1, 2]], cfg).tokens


def test_a_bare_compile_flag_means_on():
    """`--compile` alone (and a YAML `compile: true`) turns compiling on in every verb that takes it."""
    from arseq.app.options import SHARED_KINDS, normalize
    from arseq.models.inference import compile_mode
    from arseq.serve.command import parser as serve_parser

    assert normalize(["--compile"], SHARED_KINDS) == ["--compile", "true"]
    args = serve_parser().parse_args(normalize(["--checkpoint", "x", "--compile"], SHARED_KINDS))
    assert [compile_mode(v) for v in (args.compile, "true", "False", True, "auto")] == ["on", "on", "off", "on", "auto"]


def test_a_warmed_engine_compiles_nothing_while_it_decodes():
    """Engine.warm compiles a graph per span and one for a sliding row's prefill up front (what `arseq serve
    --compile` does before it listens); decoding afterwards, the rows sliding twice, compiles nothing more
    and gives the eager tokens."""
    from arseq.decode import Engine, Row

    torch.manual_seed(1)
    model = Transformer(TransformerConfig(vocab_size=40, max_seq_len=160, n_layer=1, n_head=2, d_model=16)).eval()
    cfg = SamplingConfig(max_new_tokens=300, temperature=0)
    eager = generate(model, [[3, 4]], cfg).tokens
    engine = Engine(model, slots=2, compile=True)
    try:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        engine.warm()
        warmed = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert len(engine.cache.spans) == 2  # spans 64 and the whole cache
        assert warmed - graphs == 3 and list(engine.cache.prefills) == [79]  # and a slide's prefill (half the cache, but one)
        engine.submit(Row([3, 4], cfg, seed=0))
        assert [f.tokens for f in engine.run()] == eager
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == warmed
    finally:
        engine.close()
