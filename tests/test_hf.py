"""Hugging Face interoperability: export as LlamaForCausalLM, read HF Llama folders, and the way back.

Tests that run transformers skip when it is not installed (an optional dependency, `arseq[hf]`); they build
tiny random Llama models locally, never from the network.
"""

import json
from dataclasses import make_dataclass
from pathlib import Path

import pytest
import torch

from arseq.app.export import export_model
from arseq.artifacts import checkpoint, hf
from arseq.artifacts.checkpoint import Loaded
from arseq.artifacts.metadata import RunMeta
from arseq.cli import main
from arseq.decode import SamplingConfig, generate
from arseq.modalities import DataError
from arseq.modalities.music import MusicModality
from arseq.models.transformer import Transformer, TransformerConfig


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (norm weights and biases too), so that no tensor can be mixed up unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def tiny_hf_llama(transformers, path: Path, vocab: int = 40, tie: bool = True, bias: bool = False, **extra):
    """A random LlamaForCausalLM shaped like tests/conftest.py's tiny text model, saved under `path`."""
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        attention_bias=bias,
        mlp_bias=bias,
        rope_theta=10000.0,
        **extra,
    )
    model = perturbed(transformers.LlamaForCausalLM(cfg))
    model.save_pretrained(str(path))
    return model


# ---- conversion, no transformers needed ----------------------------------------------------------------
@pytest.mark.parametrize("bias, tie", [(False, True), (True, False)])
def test_weights_split_on_export_and_fuse_back_exactly(bias, tie):
    cfg = TransformerConfig(vocab_size=50, max_seq_len=32, n_layer=2, n_head=2, d_model=32, bias=bias, tie_weights=tie)
    state = perturbed(Transformer(cfg)).state_dict()
    out = hf.to_hf_state(state, cfg)
    q, k, v = (out[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert q.shape == (32, 32) and torch.equal(torch.cat([q, k, v]), state["blocks.1.attn.qkv.weight"])
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], state["blocks.0.mlp.gate_up.weight"][96:])
    assert ("model.layers.0.mlp.down_proj.bias" in out) == bias
    back = hf.from_hf_state(out, cfg, "x")
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_key_value_heads": 1}, "grouped-query attention"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn'"),
        ({"attention_bias": True}, "biases in attention but not in the MLP"),
        ({"model_type": "gpt2"}, "not a Llama-family model"),
        ({"model_type": "mistral", "sliding_window": 16}, "sliding-window attention"),
    ],
)
def test_hf_configs_arseq_cannot_hold_are_refused_in_one_line(change, message):
    config = {
        "model_type": "llama",
        "vocab_size": 40,
        "hidden_size": 32,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
    }
    assert hf.config_from_hf(config, "m")["rope_base"] == 10000.0
    with pytest.raises(DataError, match=message) as e:
        hf.config_from_hf({**config, **change}, "m")
    assert "\n" not in str(e.value) and str(e.value).startswith("m: ")


def test_settings_without_a_llama_equivalent_are_refused():
    Alibi = make_dataclass("Alibi", [("alibi", bool, False)], bases=(TransformerConfig,))
    hf.check_exportable(Alibi(vocab_size=10, alibi=False))
    with pytest.raises(DataError, match=r"model.alibi=True has no Llama equivalent"):
        hf.check_exportable(Alibi(vocab_size=10, alibi=True))


def test_generation_config_keeps_arseq_defaults_and_greedy():
    sampled = hf.generation_kwargs(SamplingConfig(temperature=0.9, top_p=0.95), 1, 2, 0)
    assert sampled == {
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "max_new_tokens": 256,
        "do_sample": True,
        "temperature": 0.9,
        "top_k": 0,
        "top_p": 0.95,
    }  # top_k 0: HF's default is 50
    greedy = hf.generation_kwargs(SamplingConfig(temperature=0, repetition_penalty=1.2), 1, 2, 0)
    assert greedy["do_sample"] is False and "temperature" not in greedy and greedy["repetition_penalty"] == 1.2


# ---- arseq -> HF -> arseq --------------------------------------------------------------------------------
def test_hf_export_loads_in_transformers_with_the_same_logits_and_greedy_samples(transformers, trained, corpus, tmp_path, capsys):
    ckpt = trained / "checkpoints" / "last.ckpt"
    out = tmp_path / "hf"
    assert run(capsys, "export", "--checkpoint", str(ckpt), "--out", str(out), "--format", "hf")[0] == 0
    assert {"config.json", "model.safetensors", "generation_config.json", hf.HF_META, hf.HF_TOKENIZER} <= {p.name for p in out.iterdir()}
    ours = checkpoint.load(ckpt)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    tok = ours.tokenizer
    lines = corpus.read_text().splitlines()[-8:]  # held-out-like sentences, as the model sees them
    x = torch.tensor([[tok.bos_id, *tok.encode(line)][:30] for line in lines])
    with torch.no_grad():
        assert (ours.model(x) - theirs(input_ids=x).logits).abs().max() <= 1e-4
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert gen["do_sample"] is True and gen["top_k"] == 0 and gen["temperature"] == 1.0
    # arseq reads the same folder: identical greedy samples from the checkpoint and from the HF export
    greedy = [
        run(capsys, "generate", "--checkpoint", str(c), "--temperature", "0", "--max-new-tokens", "30", "--prompt", "the ")[1] for c in (ckpt, out)
    ]
    assert greedy[0] == greedy[1] and len(greedy[0]) > 20
    # ... and so does transformers' own greedy search
    prompt = [tok.bos_id, *tok.encode("the ")]
    arseq_tokens = generate(ours.model, [prompt], SamplingConfig(max_new_tokens=20, temperature=0)).tokens[0]
    hf_tokens = theirs.generate(
        torch.tensor([prompt]), do_sample=False, max_new_tokens=20, min_new_tokens=20, eos_token_id=None, pad_token_id=tok.pad_id
    )[0, len(prompt) :].tolist()
    assert hf_tokens == arseq_tokens
    code, _, err = run(capsys, "export", "--checkpoint", str(ckpt), "--out", str(out), "--format", "hf")
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize("bias, tie", [(True, False), (False, True)])
def test_hf_export_of_a_music_model_carries_biases_and_the_modality_sampling_defaults(transformers, tmp_path, bias, tie):
    modality = MusicModality()
    tok = modality.tokenizer
    cfg = TransformerConfig(vocab_size=tok.vocab_size, max_seq_len=48, n_layer=2, n_head=4, d_model=32, bias=bias, tie_weights=tie)
    meta = RunMeta("music", {}, {"source": "bach_chorales"}, cfg.__dict__)
    loaded = Loaded(perturbed(Transformer(cfg)), tok, modality, meta)
    out = export_model(loaded, tmp_path / "music", format="hf")
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_p"]) == (0.9, 0.95)  # music's defaults, as `arseq generate` samples
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert theirs.config.attention_bias is bias and theirs.config.tie_word_embeddings is tie
    back = checkpoint.load(out)
    x = torch.randint(0, tok.vocab_size, (3, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (loaded.model(x) - theirs(input_ids=x).logits).abs().max() <= 1e-4
        assert torch.equal(loaded.model(x), back.model(x))
    assert back.tokenizer.to_dict() == tok.to_dict() and back.modality.name == "music"


def test_export_without_transformers_fails_before_writing(trained, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    code, _, err = run(capsys, "export", "--checkpoint", str(trained), "--out", str(tmp_path / "x"), "--format", "hf")
    assert code == 2 and "pip install 'arseq[hf]'" in err and not (tmp_path / "x").exists()


# ---- HF -> arseq -> HF -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie, bias", [(True, False), (False, True)])
def test_hf_llama_folder_reads_into_arseq_and_converts_back_identically(transformers, tmp_path, tie, bias):
    original = tiny_hf_llama(transformers, tmp_path / "llama", tie=tie, bias=bias)
    parts = checkpoint.read_parts(tmp_path / "llama")
    assert parts.meta is None and parts.model_cfg["tie_weights"] is tie
    cfg = TransformerConfig(**parts.model_cfg)
    ours = Transformer(cfg).eval()
    ours.load_state_dict(parts.state, strict=True)
    again = transformers.LlamaForCausalLM(original.config).eval()
    again.load_state_dict(hf.to_hf_state(ours.state_dict(), cfg), strict=True)
    x = torch.randint(0, 40, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = original(input_ids=x).logits
        assert (ours(x) - reference).abs().max() <= 1e-4
        assert torch.equal(again(input_ids=x).logits, reference)


def test_plain_hf_folder_is_for_init_from_not_generate(transformers, tmp_path, capsys):
    tiny_hf_llama(transformers, tmp_path / "llama")
    capsys.readouterr()
    code, _, err = run(capsys, "generate", "--checkpoint", str(tmp_path / "llama"))
    assert code == 2 and "--init-from" in err and len(err.strip().splitlines()) == 1
