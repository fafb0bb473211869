"""The CLI as a user drives it: train, generate, evaluate, export, and one-line errors on bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from arseq.artifacts import checkpoint
from arseq.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_training_writes_checkpoints_and_loss_falls(trained):
    ckpts = {p.name for p in (trained / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    rows = [line.split(",") for line in (trained / "metrics.csv").read_text().splitlines()]
    col = rows[0].index("val/loss")
    val = [float(r[col]) for r in rows[1:] if r[col]]
    assert len(val) == 2 and val[-1] < 0.6 * np.log(30)  # far below uniform guessing
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["arseq"]["tokenizer"]["kind"] == "char"


def test_generate_is_reproducible_and_streams(trained, capsys):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    runs = [run(capsys, "generate", "--checkpoint", ckpt, "--prompt", "the ", "--max-new-tokens", "40", "--seed", "5") for _ in range(2)]
    outs = [out for _, out, _ in runs]
    assert outs[0] == outs[1] and outs[0].startswith("the ") and len(outs[0]) > 10
    assert runs[0][2].splitlines()[-1] == "nothing written: --out PATH writes the samples as files"  # on stderr, not in the text


def test_generate_writes_files(trained, tmp_path, capsys):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    code, _, err = run(capsys, "generate", "--checkpoint", ckpt, "--num-samples", "3", "--max-new-tokens", "20", "--out", str(tmp_path / "s"))
    assert code == 0 and sorted(p.name for p in (tmp_path / "s").iterdir()) == ["sample_000.txt", "sample_001.txt", "sample_002.txt"]
    assert "nothing written" not in err


def test_export_gives_identical_logits_and_greedy_output(trained, tmp_path, capsys):
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert run(capsys, "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "exp"))[0] == 0
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    a, b = checkpoint.load(ckpt), checkpoint.load(tmp_path / "exp")
    x = torch.randint(3, a.model.cfg.vocab_size, (2, 20))
    assert torch.equal(a.model(x), b.model(x))
    greedy = [run(capsys, "generate", "--checkpoint", str(c), "--temperature", "0", "--max-new-tokens", "30")[1] for c in (ckpt, tmp_path / "exp")]
    assert greedy[0] == greedy[1]
    code, _, err = run(capsys, "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "exp"))
    assert code == 2 and "already exists" in err  # never overwrites


def test_export_overwrite_replaces_an_earlier_export_and_nothing_else(trained, tmp_path, capsys):
    ckpt, out = trained / "checkpoints" / "last.ckpt", tmp_path / "exp"
    assert run(capsys, "export", "--checkpoint", str(ckpt), "--out", str(out))[0] == 0
    assert run(capsys, "export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8", "--overwrite")[0] == 0
    assert json.loads((out / "config.json").read_text())["quantization"] == "int8"  # the new export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # nothing set aside is left
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text("{}")
    (work / "notes.md").write_text("mine")
    code, _, err = run(capsys, "export", "--checkpoint", str(ckpt), "--out", str(work), "--overwrite")
    assert code == 2 and err.strip().endswith("this is not one (it holds notes.md)") and (work / "notes.md").read_text() == "mine"


def test_evaluate_prints_json(trained, capsys, corpus):
    code, out, _ = run(capsys, "evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--num-samples", "2", "--max-new-tokens", "20")
    result = json.loads(out)
    assert code == 0 and {"loss", "perplexity", "bits_per_token", "baselines", "sample_metrics", "data_metrics"} <= result.keys()
    assert result["loss"] < result["baselines"]["unigram"]["loss"]
    assert abs(result["perplexity"] - np.exp(result["loss"])) < 1e-6
    lengths = result["lengths"]  # the samples' lengths next to the held-out items': BOS + up to 20 new tokens
    assert 1 < lengths["samples"]["min"] <= lengths["samples"]["max"] <= 22 and lengths["held_out"]["median"] > 1
    code, out, _ = run(capsys, "evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--data.paths", str(corpus))
    assert code == 0 and json.loads(out)["items"] == 1
    full = json.loads(out)
    code, out, _ = run(
        capsys, "evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--data.paths", str(corpus), "--stride", str(full["context"])
    )
    restarts = json.loads(out)  # same tokens scored, but windows that restart the context
    assert restarts["predicted_tokens"] == full["predicted_tokens"] and full["stride"] == full["context"] // 2
    assert restarts["loss"] != full["loss"]
    code, _, err = run(capsys, "evaluate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--stride", "0")
    assert code != 0 and "--stride must be between 1" in err


def test_resume_continues_from_last_checkpoint(trained, tiny_config, capsys):
    last = trained / "checkpoints" / "last.ckpt"
    code, out, _ = run(capsys, "train", "--config", str(tiny_config), "--ckpt_path", str(last), "--trainer.max_steps", "70")
    assert code == 0
    resumed = Path(out.split("last checkpoint: ")[1].split()[0])
    assert torch.load(resumed, weights_only=True)["global_step"] == 70


class ForgetAfterFirstValidation(L.Callback):
    """Zeroes the weights after step 30, so every later validation is worse than the first."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step > 30:
            with torch.no_grad():
                for p in module.parameters():
                    p.zero_()


def test_last_checkpoint_is_the_newest_state_when_validation_got_worse(tiny_config, tmp_path, capsys):
    callbacks = json.dumps([{"class_path": f"{__name__}.ForgetAfterFirstValidation"}])
    code, out, _ = run(capsys, "train", "--config", str(tiny_config), "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", callbacks)
    assert code == 0
    last, best = (Path(out.split(f"{kind} checkpoint: ")[1].split()[0]) for kind in ("last", "best"))
    assert last.name == "last.ckpt" and torch.load(last, weights_only=True)["global_step"] == 60
    assert torch.load(best, weights_only=True)["global_step"] == 30


class RecordLastCheckpoint(L.Callback):
    seen: list[int] = []

    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step == 35:
            last = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"
            RecordLastCheckpoint.seen.append(torch.load(last, weights_only=True)["global_step"])


def test_runs_without_validation_save_last_checkpoint_during_training(tiny_config, tmp_path, capsys):
    callbacks = json.dumps([{"class_path": f"{__name__}.RecordLastCheckpoint"}])
    code, out, _ = run(
        capsys,
        "train",
        "--config",
        str(tiny_config),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.val_fraction",
        "0",
        "--trainer.callbacks",
        callbacks,
    )
    assert code == 0 and "best checkpoint: -" in out
    assert RecordLastCheckpoint.seen == [30]  # a tenth of max_steps: written at steps 6, 12, ..., 30
    assert torch.load(Path(out.split("last checkpoint: ")[1].split()[0]), weights_only=True)["global_step"] == 60


class RecordCompiled(L.Callback):
    seen: list[bool] = []

    def on_train_start(self, trainer, module):
        RecordCompiled.seen.append(module.model._compiled_call_impl is not None)


def test_compiled_training_matches_eager_and_saves_plain_checkpoints(trained, tiny_config, tmp_path, capsys):
    callbacks = json.dumps([{"class_path": f"{__name__}.RecordCompiled"}])
    code, out, _ = run(
        capsys,
        "train",
        "--config",
        str(tiny_config),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--compile",
        "true",
        "--trainer.callbacks",
        callbacks,
    )
    assert code == 0 and RecordCompiled.seen == [True]
    compiled = torch.load(Path(out.split("last checkpoint: ")[1].split()[0]), weights_only=True)
    eager = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    assert compiled["global_step"] == eager["global_step"] == 60
    assert compiled["state_dict"].keys() == eager["state_dict"].keys()  # no "_orig_mod." prefixes
    for name, weight in eager["state_dict"].items():  # same seed, same batches: the same training, up to rounding
        torch.testing.assert_close(compiled["state_dict"][name], weight, atol=2e-3, rtol=0)


def test_compile_that_cannot_work_stops_in_one_line(tiny_config, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InductorError: no C++ compiler found\n  deep traceback line")

    monkeypatch.setattr(torch, "compile", broken)
    code, _, err = run(capsys, "train", "--config", str(tiny_config), "--trainer.default_root_dir", str(tmp_path), "--compile", "true")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "torch.compile does not work on cpu: InductorError: no C++ compiler found (set compile: false)" in err
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data.pahts", "x"], "data.pahts"),
        (["--model.n_layer", "two"], "--model.n_layer: expected an integer, got 'two'"),
        (["--optim.name", "sgd"], "--optim.name: expected one of adamw, muon, got 'sgd'"),
        (["--modality.tokenizer", "words"], "modality.tokenizer"),
        (["--data.paths", "/no/such/file.txt"], "/no/such/file.txt: no such file"),
    ],
)
def test_config_errors_are_one_line(tiny_config, capsys, argv, message):
    code, _, err = run(capsys, "train", "--config", str(tiny_config), *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_value_of_the_wrong_type_says_what_the_option_takes(trained, capsys):
    import arseq

    code, _, err = run(capsys, "generate", "--checkpoint", str(trained), "--temperature", "hot")
    assert code == 2 and err.strip().endswith("--temperature: expected a number, got 'hot'"), err
    code, _, err = run(capsys, "generate", "--checkpoint", str(trained), "--num-samples", "2.5")
    assert code == 2 and err.strip().endswith("--num-samples: expected an integer, got '2.5'"), err
    code, _, err = run(capsys, "generate", "--checkpoint", str(trained), "--overwrite", "maybe")
    assert code == 2 and err.strip().endswith("--overwrite: expected true or false (or nothing: true), got 'maybe'"), err
    with pytest.raises(ValueError, match=r"^top_k: expected an integer, got '1.5'$"):
        arseq.load(trained).generate(1, top_k=1.5)


def test_a_wrong_value_from_a_config_file_names_the_file_and_key(trained, tiny_config, tmp_path, capsys):
    gen = tmp_path / "gen.yaml"
    gen.write_text("temperature: hot\n")
    code, _, err = run(capsys, "generate", "--checkpoint", str(trained), "--config", str(gen))
    assert code == 2 and err.strip().endswith(f"{gen}: temperature: expected a number, got 'hot'"), err
    code, _, err = run(capsys, "generate", "--checkpoint", str(trained), f"--config={gen}", "--temperature", "0.5")
    assert code == 2 and err.strip().endswith(f"{gen}: temperature: expected a number, got 'hot'"), err  # the file is read as it comes
    gen.write_text("top_k: 3\n")
    for argv in (["--config", str(gen), "--temperature", "warm"], ["--temperature=warm", f"--config={gen}"]):
        code, _, err = run(capsys, "generate", "--checkpoint", str(trained), *argv)
        assert code == 2 and err.strip().endswith("--temperature: expected a number, got 'warm'"), err
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config.read_text().replace("trainer:", "trainer:\n  precision: 13"))
    code, _, err = run(capsys, "train", "--config", str(bad))
    assert code == 2 and err.strip().endswith("got '13'"), err
    choices = err.split("expected one of ", 1)[1].split(", got")[0].split(", ")
    assert f"{bad}: trainer.precision:" in err and len(choices) == len(set(choices)) and {"32", "bf16-mixed"} <= set(choices), err


def test_yaml_typo_names_the_key(tiny_config, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config.read_text().replace("optim:", "optimm:"))
    code, _, err = run(capsys, "prepare", "--config", str(bad))
    assert code == 2 and "optimm" in err and len(err.strip().splitlines()) == 1


def test_bad_data_and_checkpoints_get_one_line_errors(trained, tiny_config, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(1000))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    cases = [
        (["prepare", "--config", str(tiny_config), "--data.paths", str(empty)], "empty file"),
        (["generate", "--checkpoint", str(junk)], "not a readable checkpoint, truncated or damaged"),
        (["generate", "--checkpoint", str(trained / "metrics.csv")], "metrics.csv: not a checkpoint; give a .ckpt, a run folder"),
        (["generate", "--checkpoint", str(foreign)], "not an arseq checkpoint"),
        (["generate", "--checkpoint", ckpt, "--prompt", "QQQ"], "not in the tokenizer's vocabulary"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_vocab_mismatch_is_reported(trained, tmp_path, capsys):
    exp = tmp_path / "exp"
    main(["export", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--out", str(exp)])
    state = json.loads((exp / "tokenizer.json").read_text())
    state["chars"] += "ZQ"
    (exp / "tokenizer.json").write_text(json.dumps(state))
    code, _, err = run(capsys, "generate", "--checkpoint", str(exp))
    assert code == 2 and "tokenizer has" in err and "model's vocabulary" in err


def test_help_and_modalities(capsys):
    assert run(capsys, "--help")[0] == 0
    code, out, _ = run(capsys, "modalities")
    assert code == 0 and out.splitlines()[0].startswith("text\t")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--trainer.max_steps" in capsys.readouterr().out


def test_the_training_bar_counts_steps_not_epochs(tiny_config, tmp_path, capfd, caplog, recwarn, monkeypatch):
    """Lightning labelled it "Epoch 0/-2" (rich) or "Epoch 0" (tqdm): a run is bounded by steps, max_epochs is -1."""
    from arseq.train import progress

    bar = SimpleNamespace(validation_description="Validation")  # a RichProgressBar cannot be made without rich
    assert progress.StepRichBar._get_train_description(bar, 0) == "training  "  # as wide as "Validation"
    assert progress.progress_bar({"enable_progress_bar": False}, []) == []
    monkeypatch.setattr(progress, "_RICH_AVAILABLE", False)  # tqdm's bar, Lightning's choice without rich
    argv = ["--trainer.enable_progress_bar", "true", "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path)]
    assert main(["train", "--config", str(tiny_config), *argv]) == 0
    shown = "".join(capfd.readouterr())  # Lightning's tqdm bar draws on stdout
    assert "training: 100%" in shown and "3/3" in shown and "Epoch" not in shown, shown[-1000:]
    said = [r.getMessage() for r in caplog.records] + [str(w.message) for w in recwarn]
    assert not [m for m in said if re.search(r"Tip:|TPU available|LeafSpec", m)]  # Lightning's advertisements and noise


def test_lightnings_noise_is_dropped(caplog, recwarn):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    from arseq.train.run import quiet

    quiet()
    rank_zero_info("\U0001f4a1 Tip: For seamless cloud logging, try installing litlogger")
    rank_zero_warn("You're using the WeightAveraging callback with a model that overrides the configure_model callback.")
    rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"] and not recwarn.list


def test_lightnings_model_table_is_off_unless_asked():
    from lightning.pytorch.callbacks import ModelSummary

    from arseq.train.run import make_trainer

    tables = [
        any(isinstance(c, ModelSummary) for c in make_trainer(max_steps=1, logger=False, enable_model_summary=asked).callbacks)
        for asked in (None, True)
    ]
    assert tables == [False, True]  # arseq logs the model in one line; the table said "Total FLOPs: 0"


def test_version_and_a_verb_called_bare(capsys):
    from importlib.metadata import version

    assert run(capsys, "--version")[:2] == (0, f"arseq {version('arseq')}\n")
    needs = {
        "train": "--config is required: a YAML file or a shipped config's name ('arseq configs' lists them)",
        "evaluate": "--checkpoint is required",  # once: the verb's name was in it twice
    }
    for verb, line in needs.items():
        code, out, err = run(capsys, verb)
        assert (code, out, err.strip()) == (2, "", f"arseq {verb}: error: {line}")


def test_two_process_ddp_on_cpu(tiny_config, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    root = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "arseq",
        "train",
        "--config",
        str(tiny_config),
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        "6",
        "--trainer.val_check_interval",
        "3",
        "--trainer.default_root_dir",
        str(root),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = next(root.rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_generate_options_from_yaml_equal_the_same_flags(trained, tmp_path, capsys):
    ckpt = trained / "checkpoints" / "last.ckpt"
    flags = ["--temperature", "0.8", "--max-new-tokens", "24", "--num-samples", "2", "--seed", "5", "--top-k", "10"]
    code, by_flags, _ = run(capsys, "generate", "--checkpoint", str(ckpt), *flags)
    (tmp_path / "gen.yaml").write_text(f"checkpoint: {ckpt}\ntemperature: 0.8\nmax_new_tokens: 24\nnum_samples: 2\nseed: 5\ntop_k: 10\n")
    code2, by_yaml, _ = run(capsys, "generate", "--config", str(tmp_path / "gen.yaml"))
    assert code == code2 == 0 and by_flags == by_yaml and "sample 1" in by_yaml
    code, overridden, _ = run(capsys, "generate", "--config", str(tmp_path / "gen.yaml"), "--seed", "6")  # flags override
    assert code == 0 and overridden != by_yaml
    (tmp_path / "bad.yaml").write_text("temperature: warm\n")
    code, _, err = run(capsys, "generate", "--checkpoint", str(ckpt), "--config", str(tmp_path / "bad.yaml"))
    assert code == 2 and "temperature" in err and len(err.strip().splitlines()) == 1


class RecordStartWeights(L.Callback):
    seen: list[dict] = []

    def on_train_start(self, trainer, module):
        RecordStartWeights.seen.append({k: v.clone() for k, v in module.state_dict().items()})


def test_ema_checkpoints_serve_the_average_and_resume_from_the_raw_weights(tiny_config, tmp_path, capsys):
    """Lightning's EMAWeightAveraging as a config callback (configs/image/digits.yaml uses it): checkpoints hold
    the averaged weights, which is what generate/evaluate load; resuming continues from the raw ones."""
    ema = {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}}
    code, out, _ = run(
        capsys, "train", "--config", str(tiny_config), "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", json.dumps([ema])
    )
    assert code == 0
    last = Path(out.split("last checkpoint: ")[1].split()[0])
    ckpt = torch.load(last, weights_only=True)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert averaged.keys() == raw.keys() and any(not torch.equal(averaged[k], raw[k]) for k in raw)
    served = checkpoint.load(last).model.state_dict()
    for name, weight in served.items():
        torch.testing.assert_close(weight, averaged[f"model.{name}"], atol=0, rtol=0)
    record = {"class_path": f"{__name__}.RecordStartWeights"}
    code, out, _ = run(
        capsys,
        "train",
        "--config",
        str(tiny_config),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--ckpt_path",
        str(last),
        "--trainer.max_steps",
        "70",
        "--trainer.callbacks",
        json.dumps([ema, record]),
    )
    assert code == 0 and torch.load(Path(out.split("last checkpoint: ")[1].split()[0]), weights_only=True)["global_step"] == 70
    start = RecordStartWeights.seen[-1]
    assert all(torch.equal(start[k], raw[k]) for k in raw)
