"""The linear layer's routes (arseq.models.linear): each gives F.linear's numbers (int8 routes within their
quantization), the rule follows the CPU's features and falls back where one is missing, FBGEMM's packed
weights follow the weights, and --dtype bfloat16 falls back to float32 on a CPU without bf16 arithmetic."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from arseq.models import Transformer, TransformerConfig, cpu_features, fbgemm_int8
from arseq.models import linear as linear_module
from arseq.models.inference import resolve_dtype
from arseq.models.linear import forced_route, linear, route, rule_route
from arseq.models.quantize import Int8Linear, quantize_model, quantize_rows

needs_fbgemm = pytest.mark.skipif(not cpu_features.fbgemm_int8(), reason="FBGEMM int8 needs AVX2 and a build with FBGEMM")


@pytest.fixture
def layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(96, 64) * 0.05
    q, scale = quantize_rows(w)
    return w, q, scale


@pytest.mark.parametrize("rows", [1, 5, 8])
@pytest.mark.parametrize("name", ["reduce", "blas"])
def test_float_routes_compiled_equal_f_linear(layer, rows, name):
    w, q, scale = layer
    x = torch.randn(rows, 1, 64)
    with forced_route(name):
        fn = torch.compile(lambda x: (linear(x, w), linear(x, q, scale)), fullgraph=True, dynamic=False)
        y, yq = fn(x)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(yq, F.linear(x, q.float()) * scale, rtol=1e-5, atol=1e-5)


@needs_fbgemm
@pytest.mark.parametrize("rows", [1, 5, 8])
def test_fbgemm_int8_is_close_to_the_dequantized_product_eager_and_compiled(layer, rows):
    w, q, scale = layer
    owner = Int8Linear(torch.nn.Parameter(q, requires_grad=False), torch.nn.Parameter(scale, requires_grad=False), None)
    x = torch.randn(rows, 1, 64)
    exact = F.linear(x, q.float()) * scale
    with forced_route("fbgemm_int8"):
        assert route(x, q, scale) == "fbgemm_int8"
        eager = owner(x)
        compiled = torch.compile(lambda x: owner(x), fullgraph=True, dynamic=False)(x)
    # Activations quantized to 7 bits per row: ~1 % of the output's scale.
    assert ((eager - exact).norm() / exact.norm()).item() < 0.03
    torch.testing.assert_close(compiled, eager)
    with forced_route("fbgemm_int8"):  # each row alone gives the same bits: no dependence on the batch
        alone = torch.cat([owner(x[i : i + 1] * (10.0 if i == 0 else 1.0)) for i in range(rows)])
        together = owner(torch.cat((x[:1] * 10.0, x[1:])))
    assert torch.equal(alone, together)


def test_the_rule_follows_the_cpu_and_falls_back_without_a_feature(monkeypatch):
    avx2 = frozenset({"avx2", "fma"})
    monkeypatch.setattr(cpu_features, "FBGEMM_BUILT", True)
    monkeypatch.setattr(cpu_features, "FOUND", avx2)
    assert rule_route("cpu", torch.int8, True, 1, True) == "fbgemm_int8"  # Inductor's int8 loop is slow on AVX2
    assert rule_route("cpu", torch.int8, True, 8, False) == "blas"  # eager: the dequantized sgemm, a row alone or in a batch
    assert rule_route("cpu", torch.int8, True, 64, False) == "blas"  # prefill and scoring: weights-only error
    assert rule_route("cpu", torch.float32, False, 8, True) == "blas"  # MKL's sgemm beat Inductor's loop on AVX2
    assert rule_route("cpu", torch.float32, False, 64, True) == "blas"
    assert rule_route("cpu", torch.int8, False, 8, True) == "reduce"  # no scale: no FBGEMM pack
    monkeypatch.setattr(cpu_features, "FOUND", avx2 | {"avx512"})
    assert rule_route("cpu", torch.int8, True, 1, True) == "reduce"  # measured best on the AVX-512 host
    assert rule_route("cpu", torch.int8, True, 1, False) == "blas"
    assert rule_route("cpu", torch.float32, False, 8, True) == "reduce"
    monkeypatch.setattr(cpu_features, "FOUND", frozenset())  # no AVX2: no FBGEMM, the plain routes
    assert rule_route("cpu", torch.int8, True, 1, True) == "reduce"
    assert not cpu_features.fbgemm_int8()
    monkeypatch.setattr(cpu_features, "FOUND", avx2)
    monkeypatch.setattr(cpu_features, "FBGEMM_BUILT", False)  # a build without FBGEMM
    assert rule_route("cpu", torch.int8, True, 1, True) == "reduce"
    assert rule_route("cuda", torch.float32, False, 1, True) == "blas"  # cuBLAS for float weights on a GPU
    assert rule_route("cuda", torch.int8, True, 1, True) == "reduce"


def test_a_forced_route_that_does_not_apply_is_the_rule(layer, monkeypatch):
    w, q, scale = layer
    x = torch.randn(3, 64)
    with forced_route("fbgemm_int8"):
        assert route(x, w) == rule_route("cpu", torch.float32, False, 3, False)  # float weights: no int8 product
    with forced_route("reduce"):
        assert route(x, w) == "blas"  # eager: the reduction is only for compiled few-row passes
    with pytest.raises(ValueError, match="route must be one of"):
        with forced_route("amx"):
            pass


def test_cpu_features_override_parses_names(monkeypatch):
    monkeypatch.setenv("ARSEQ_CPU_FEATURES", "avx2, bogus,amx")
    assert cpu_features._detect() == frozenset({"avx2", "amx"})
    monkeypatch.setenv("ARSEQ_CPU_FEATURES", "")
    assert cpu_features._detect() == frozenset()
    with pytest.raises(ValueError, match="unknown CPU feature"):
        cpu_features.has("sse9")


@needs_fbgemm
def test_fbgemm_packs_follow_the_weights_and_each_copy_packs_its_own(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=40, max_seq_len=32, n_layer=1, n_head=2, d_model=32)).eval()
    q = quantize_model(model, "int8")
    packs = []
    real = fbgemm_int8._pack
    monkeypatch.setattr(fbgemm_int8, "_pack", lambda *a: packs.append(1) or real(*a))
    x = torch.randint(0, 40, (2, 7))
    with torch.no_grad(), forced_route("fbgemm_int8"):
        first = q(x)
        n = len(packs)
        assert n == 5 and torch.equal(q(x), first)  # qkv, proj, gate_up, down, lm_head; then kept
        twin = copy.deepcopy(q)
        assert twin.lm_head.owner != q.lm_head.owner
        assert torch.equal(twin(x), first) and len(packs) == 2 * n
        with torch.no_grad():
            q.blocks[0].mlp.down.weight.mul_(-1)  # written in place: the pack is rebuilt
        assert not torch.equal(q(x), first) and len(packs) == 2 * n + 1


def test_bfloat16_on_a_cpu_without_bf16_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(cpu_features, "FOUND", frozenset({"avx2", "fma"}))
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.float32
    assert [r.getMessage() for r in caplog.records] == ["--dtype bfloat16: this CPU has no bfloat16 arithmetic (AVX512-BF16 or AMX); using float32"]
    monkeypatch.setattr(cpu_features, "FOUND", frozenset({"avx2", "avx512", "avx512_bf16"}))
    assert resolve_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    assert linear_module.FUSED_ROWS >= 8  # decode steps of a batch of 8 stay on the few-row routes
