"""`arseq train --init-from`: a new run starting from existing weights (fine-tuning), not a resumed one."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from arseq.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class RecordStart(L.Callback):
    """The model's weights and the optimizer's step count when training starts."""

    seen: list[dict] = []

    def on_train_start(self, trainer, module):
        RecordStart.seen.append(
            {"state": {k: v.clone() for k, v in module.model.state_dict().items()}, "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        )


CALLBACKS = json.dumps([{"class_path": f"{__name__}.RecordStart"}])


def last_checkpoint(out: str) -> dict:
    return torch.load(Path(out.split("last checkpoint: ")[1].split()[0]), weights_only=True)


def test_init_from_checkpoint_starts_from_its_weights_and_tokenizer(trained, tiny_config, tmp_path, capsys):
    source = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    # new data with fewer characters: refitting would give another vocabulary, the source's must be kept
    (tmp_path / "new.txt").write_text("the cat sat on the mat.\n" * 200, encoding="utf-8")
    RecordStart.seen.clear()
    code, out, err = run(
        capsys,
        "train",
        "--config",
        str(tiny_config),
        "--init-from",
        str(trained),
        "--data.paths",
        str(tmp_path / "new.txt"),
        "--trainer.max_steps",
        "4",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.callbacks",
        CALLBACKS,
    )
    assert code == 0, err
    assert f"initialised from {trained / 'checkpoints'}" in err and "its tokenizer" in err
    start = RecordStart.seen[-1]
    for name, weight in start["state"].items():
        assert torch.equal(weight, source["state_dict"]["model." + name]), name
    assert start["lr"] < 3.0e-3 / 4  # warm-up from step 0: a fresh schedule, not the source's decayed one
    new = last_checkpoint(out)
    assert new["global_step"] == 4 and new["arseq"]["tokenizer"] == source["arseq"]["tokenizer"]


def test_init_from_an_arseq_export_and_refusals(trained, tiny_config, tmp_path, capsys):
    export = tmp_path / "exp"
    assert run(capsys, "export", "--checkpoint", str(trained), "--out", str(export))[0] == 0
    base = ["train", "--config", str(tiny_config), "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_steps", "2"]
    code, out, err = run(capsys, *base, "--init-from", str(export))
    assert code == 0 and "initialised from" in err, err
    cases = [
        (["--init-from", str(export), "--model.d_model", "64"], "model.d_model is 32 there but 64 in the config"),
        (["--init-from", str(export), "--model.tie_weights", "false"], "model.tie_weights is True there but False"),
        (["--init-from", str(tmp_path / "missing.ckpt")], "no such checkpoint"),
        (["--init-from", str(export), "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")], "give one of them"),
        (["--init-from", str(export), "--modality.tokenizer", "bpe"], None),  # the source's char tokenizer is reused
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *base, *argv)
        if message is None:
            assert code == 0 and last_checkpoint(out)["arseq"]["tokenizer"]["kind"] == "char", err
        else:
            assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_init_from_a_hugging_face_llama_needs_resize_for_another_vocabulary(tiny_config, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from test_hf import tiny_hf_llama

    llama = tiny_hf_llama(transformers, tmp_path / "llama", vocab=40)
    capsys.readouterr()
    base = [
        "train",
        "--config",
        str(tiny_config),
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.max_steps",
        "2",
        "--init-from",
        str(tmp_path / "llama"),
    ]
    code, _, err = run(capsys, *base)
    assert code == 2 and "vocabulary of 40 tokens but the tokenizer 24" in err and "--init-from-resize-vocab" in err
    RecordStart.seen.clear()
    code, out, err = run(capsys, *base, "--init-from-resize-vocab", "--trainer.callbacks", CALLBACKS)
    assert code == 0 and "vocabulary resized 40 -> 24" in err and "the config's tokenizer" in err, err
    state = RecordStart.seen[-1]["state"]
    hf_state = llama.state_dict()
    assert torch.equal(state["embed.weight"], hf_state["model.embed_tokens.weight"][:24])
    assert torch.equal(state["blocks.1.attn.qkv.weight"][:32], hf_state["model.layers.1.self_attn.q_proj.weight"])
    # a larger vocabulary: the old rows kept, the new ones at the mean embedding
    small = tiny_hf_llama(transformers, tmp_path / "small", vocab=20)
    capsys.readouterr()
    RecordStart.seen.clear()
    code, out, err = run(capsys, *base[:-1], str(tmp_path / "small"), "--init-from-resize-vocab", "--trainer.callbacks", CALLBACKS)
    assert code == 0, err
    embed, old = RecordStart.seen[-1]["state"]["embed.weight"], small.state_dict()["model.embed_tokens.weight"]
    assert torch.equal(embed[:20], old) and torch.allclose(embed[20:], old.mean(0).expand(4, -1))


def test_init_from_a_hugging_face_export_reuses_its_arseq_tokenizer(trained, tiny_config, tmp_path, capsys):
    pytest.importorskip("transformers")
    assert run(capsys, "export", "--checkpoint", str(trained), "--out", str(tmp_path / "hf"), "--format", "hf")[0] == 0
    source = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    RecordStart.seen.clear()
    code, out, err = run(
        capsys,
        "train",
        "--config",
        str(tiny_config),
        "--init-from",
        str(tmp_path / "hf"),
        "--trainer.max_steps",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.callbacks",
        CALLBACKS,
    )
    assert code == 0 and "its tokenizer" in err, err
    for name, weight in RecordStart.seen[-1]["state"].items():
        assert torch.equal(weight, source["state_dict"]["model." + name]), name
    assert last_checkpoint(out)["arseq"]["tokenizer"] == source["arseq"]["tokenizer"]
