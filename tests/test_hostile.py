"""Hostile files and careless flags (issue 29), one table per class: bounded memory and time, reads only where
pointed, nothing lost, one line.

Each refusal is checked the same way: exit code 2, exactly one line on stderr naming the file, flag or field,
no traceback, and nothing written or changed outside the output. Memory bombs run in one subprocess under
RLIMIT_AS (a bomb that got past its check would die there in seconds, not take the machine), the race is
two real processes, and the full disk is a 1 MB tmpfs (skipped where it cannot be mounted).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hostile_files import TEXT, base_parts, config_file, deep_json, make_ckpt, make_export, make_hf, midi_gap, train_config, yaml_bomb, zip_bomb

from arseq.cli import main
from arseq.errors import DataError

BOMB_MEMORY = 3 * 2**30  # RLIMIT_AS of the bomb subprocess: imports fit, any real bomb does not
BOMB_SECONDS = 10.0  # each bomb must be refused within this (measured: 0.01-0.4 s each, imports done)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every crafted file of the tables, built once (milliseconds each: no training)."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "train.txt"
    data.write_text(TEXT, encoding="utf-8")
    f = {"root": root, "data": data, "ok": make_ckpt(root / "ok.ckpt", data_paths=str(data))}
    f["big"] = make_ckpt(root / "big.ckpt", model={"n_layer": 2000, "d_model": 4096})
    f["ctx"] = make_ckpt(root / "ctx.ckpt", model={"max_seq_len": 10**10})
    f["vocab"] = make_ckpt(root / "vocab.ckpt", model={"vocab_size": 10**11})
    f["zip"] = zip_bomb(f["ok"], root / "zip.ckpt")
    f["yaml"] = yaml_bomb(root / "bomb.yaml")
    f["hf_ctx"] = make_hf(root / "hf_ctx", {"max_position_embeddings": 10**10})
    f["hf_mlp"] = make_hf(root / "hf_mlp", {"intermediate_size": 10**9, "num_hidden_layers": 40})
    f["config"] = train_config(root / "train.yaml", data, root / "runs")
    f["export"] = make_export(f["ok"], root / "export")
    meta, _ = base_parts()
    for name, changes in {
        "empty_meta": {"arseq": {}},
        "tok_keys": {"tokenizer": {"kind": "char"}},
        "tok_type": {"tokenizer": 5},
        "bpe": {"tokenizer": {"kind": "bpe", "json": "garbage"}},
        "modality5": {"modality": {"name": 5}},
        "model_list": {"model": [1, 2]},
        "lengths_text": {"item_tokens": {"p95": "10**9"}},
        "lengths_list": {"item_tokens": [1]},
        "model_float": {"model": {**meta["model"], "n_layer": 1.5}},
        "image_option": {"modality": {"name": "image", "options": {"size": 100_000, "patch_size": 1}}},
        "image_tok": {
            "modality": {"name": "image", "options": {"size": 8, "patch_size": 1}},
            "tokenizer": {"kind": "patch", "codebook": [[0], [255]], "size": 100_000, "patch_size": 1, "mode": "L"},
        },
    }.items():
        if name == "empty_meta":
            torch.save({"arseq": {}, "state_dict": {}}, root / f"{name}.ckpt")
        else:
            make_ckpt(root / f"{name}.ckpt", meta=changes)
        f[name] = root / f"{name}.ckpt"
    music = {"modality": {"name": "music", "workers": 1}, "data": {"paths": None, "val_fraction": 0.0}}
    for name, gap, division in (("gap28", 2**28 - 1, 96), ("gap6", 10**6, 1)):
        music["data"]["paths"] = str(midi_gap(root / f"{name}.mid", gap, division))
        f[name] = config_file(root / f"{name}.yaml", music)
    f["done"] = make_ckpt(root / "done.ckpt", model={"max_seq_len": 16}, global_step=10)  # the config's model
    (root / "a_file").write_text("x")
    return f


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not any(part in skip for part in p.relative_to(root).parts)
    }


def one_line(err: str, expect: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and lines[0].startswith("arseq "), lines[0]
    assert expect in lines[0], lines[0]
    return lines[0]


# ---- 1. small files and flags that would take all memory: one subprocess under RLIMIT_AS -------------------
BOMBS: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str]] = {
    "2000 layers x 4096 wide": (lambda f: ["generate", "--checkpoint", str(f["big"])], "model.n_layer=2000"),
    "max_seq_len 1e10": (lambda f: ["evaluate", "--checkpoint", str(f["ctx"])], "model.max_seq_len=10000000000"),
    "vocab_size 1e11": (lambda f: ["export", "--checkpoint", str(f["vocab"]), "--out", str(f["root"] / "x")], "model.vocab_size"),
    "HF max_position_embeddings 1e10": (lambda f: ["generate", "--checkpoint", str(f["hf_ctx"])], "max_position_embeddings"),
    "HF intermediate_size 1e9 x 40 layers": (lambda f: ["generate", "--checkpoint", str(f["hf_mlp"])], "intermediate_size=1000000000"),
    "zip entry inflating 1000x": (lambda f: ["generate", "--checkpoint", str(f["zip"])], "zip entry"),
    "YAML billion laughs": (lambda f: ["prepare", "--config", str(f["yaml"])], "alias"),
    "YAML billion laughs (generate)": (lambda f: ["generate", "--config", str(f["yaml"])], "alias"),
    "--num-samples 1e9": (lambda f: ["generate", "--checkpoint", str(f["ok"]), "--num-samples", "1000000000"], "--num-samples"),
    "--draft-tokens 1e8": (lambda f: ["generate", "--checkpoint", str(f["ok"]), "--draft", "ngram", "--draft-tokens", "100000000"], "--draft-tokens"),
    "MIDI note of 2^28 ticks (37 bytes)": (lambda f: ["prepare", "--config", str(f["gap28"])], "quarter notes"),
    "MIDI note of 10^6 ticks at 1 per quarter": (lambda f: ["prepare", "--config", str(f["gap6"])], "quarter notes"),
    "--data.block_size 1e9": (lambda f: ["train", "--config", str(f["config"]), "--data.block_size", "1000000000"], "data.block_size=1000000000"),
}

DRIVER = """
import contextlib, io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from arseq.cli import main
import lightning, music21.converter  # imported before the clocks start: the seconds measure the refusals
results = {}
for name, argv in json.loads(sys.stdin.read()).items():
    err, t0 = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException as e:
            rc = repr(e)[:300]
    results[name] = {"rc": rc, "err": err.getvalue(), "seconds": time.perf_counter() - t0}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bombs(files, tmp_path_factory) -> dict[str, dict[str, Any]]:
    cases = {name: build(files) for name, (build, _) in BOMBS.items()}
    env = {**os.environ, "ARSEQ_CACHE_DIR": str(tmp_path_factory.mktemp("bomb_cache"))}
    before = tree(files["root"])
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(BOMB_MEMORY)], input=json.dumps(cases), capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert tree(files["root"]) == before  # no bomb wrote anything
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(BOMBS))
def test_memory_bomb_is_refused_in_seconds_with_one_line(bombs, name):
    result = bombs[name]
    assert result["rc"] == 2, result
    one_line(result["err"], BOMBS[name][1])
    assert result["seconds"] < BOMB_SECONDS, result


# ---- 2, 5, 6. files and flags refused in one line, in process ------------------------------------------------
def _hf_index(files: dict[str, Path], name: str, shard: str) -> list[str]:
    folder = make_hf(files["root"] / name, index={"model.embed_tokens.weight": shard})
    return ["generate", "--checkpoint", str(folder)]


def _symlinked(files: dict[str, Path], name: str, inner: str) -> list[str]:
    folder = files["root"] / name
    shutil.copytree(files["export"], folder)
    (folder / inner).unlink()
    (folder / inner).symlink_to(files["root"] / "a_file" if inner != "model.safetensors" else files["export"] / inner)
    return ["generate", "--checkpoint", str(folder)]


def _deep_tokenizer(files: dict[str, Path]) -> list[str]:
    folder = files["root"] / "deep_export"
    shutil.copytree(files["export"], folder)
    (folder / "tokenizer.json").write_text(deep_json(), encoding="utf-8")
    return ["generate", "--checkpoint", str(folder)]


def _ckpt(name: str, *flags: str, verb: str = "generate") -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: [verb, "--checkpoint", str(f[name]), *flags]


def _train(*flags: str) -> Callable[[dict[str, Path]], list[str]]:
    return lambda f: ["train", "--config", str(f["config"]), *flags]


REFUSED: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str]] = {
    # 1. absurd flags
    "--num-samples 2e7": (_ckpt("ok", "--num-samples", "20000000"), "--num-samples"),
    "--draft-tokens past the context": (_ckpt("ok", "--draft", "ngram", "--draft-tokens", "33"), "--draft-tokens 33"),
    "--batch-size 0": (_ckpt("ok", "--batch-size", "0"), "--batch-size"),
    "--max-new-tokens 1e10": (_ckpt("ok", "--max-new-tokens", "10000000000"), "--max-new-tokens"),
    "image modality.size 100,000 in a file": (_ckpt("image_option"), "modality.size 100000"),
    "image tokenizer size 100,000 in a file": (_ckpt("image_tok"), "size 100000"),
    "YAML recursive alias": (lambda f: ["generate", "--config", str(_write(f, "rec.yaml", "a: &x [1, *x]\n"))], "recursive"),
    # 2. reads stay inside model folders
    "HF shard ../../x": (lambda f: _hf_index(f, "hf_up", "../../x.safetensors"), "leads outside"),
    "HF shard /etc/passwd": (lambda f: _hf_index(f, "hf_abs", "/etc/passwd"), "leads outside"),
    "export tokenizer.json symlinked out": (lambda f: _symlinked(f, "link_tok", "tokenizer.json"), "outside"),
    "export model.safetensors symlinked out": (lambda f: _symlinked(f, "link_model", "model.safetensors"), "outside"),
    # 5. run folders
    "resume past max_steps": (lambda f: ["train", "--config", str(f["config"]), "--ckpt_path", str(f["done"])], "already trained"),
    # 6. one line for the rest
    "arseq: {}": (_ckpt("empty_meta"), "arseq metadata lacks"),
    "tokenizer state missing keys": (_ckpt("tok_keys"), "tokenizer state is unusable"),
    "tokenizer state of the wrong type": (_ckpt("tok_type"), "not a mapping"),
    "garbage BPE JSON": (_ckpt("bpe"), "tokenizer state is unusable"),
    "modality.name: 5": (_ckpt("modality5"), "modality"),
    "model config a list": (_ckpt("model_list"), "not a mapping"),
    "item lengths of text": (_ckpt("lengths_text"), "item_tokens settings hold a value that is not a count"),
    "item lengths a list": (_ckpt("lengths_list"), "item_tokens settings are a list"),
    "model config n_layer 1.5": (_ckpt("model_float"), "model.n_layer"),
    "deeply nested tokenizer.json": (_deep_tokenizer, "tokenizer"),
    "--out under a file (NotADirectoryError)": (
        lambda f: ["generate", "--checkpoint", str(f["ok"]), "--out", str(f["root"] / "a_file" / "s.txt")],
        "is a file",
    ),
    "--out name too long (ENAMETOOLONG)": (
        lambda f: ["generate", "--checkpoint", str(f["ok"]), "--out", str(f["root"] / ("x" * 300 + ".txt"))],
        "too long",
    ),
    "trainer.default_root_dir a file": (_train("--trainer.default_root_dir", "A_FILE"), "a_file"),
    "trainer.accumulate_grad_batches 0": (_train("--trainer.accumulate_grad_batches", "0"), "accumulate_grad_batches"),
    "score --batch-size -1": (
        lambda f: ["score", "--checkpoint", str(f["ok"]), "--data.paths", str(f["data"]), "--batch-size", "-1"],
        "--batch-size",
    ),
    "score --per-token --batch-size -1": (
        lambda f: ["score", "--checkpoint", str(f["ok"]), "--data.paths", str(f["data"]), "--per-token", "--batch-size", "-1"],
        "--batch-size",
    ),
}
if not torch.cuda.is_available():
    REFUSED["trainer.accelerator gpu without a GPU"] = (_train("--trainer.accelerator", "gpu"), "no CUDA GPU")


def _write(files: dict[str, Path], name: str, text: str) -> Path:
    (files["root"] / name).write_text(text, encoding="utf-8")
    return files["root"] / name


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_in_one_line(files, name, capsys):
    argv = [str(files["root"] / "a_file") if a == "A_FILE" else a for a in REFUSED[name][0](files)]
    capsys.readouterr()
    before = tree(files["root"])
    assert main(argv) == 2
    one_line(capsys.readouterr().err, REFUSED[name][1])
    assert tree(files["root"]) == before  # nothing written or changed
    cache = Path(os.environ["ARSEQ_CACHE_DIR"])
    assert not [*cache.glob(".*"), *cache.glob("*/.*")]  # no temporary entry left in the cache root


def test_stored_data_paths_are_read_only_when_none_are_given_and_never_for_exports(tmp_path, monkeypatch, capsys, caplog):
    import arseq.data.prepare as prepare_module

    secret = tmp_path / "secret.txt"
    secret.write_text(TEXT, encoding="utf-8")
    given = tmp_path / "given.txt"
    given.write_text(TEXT, encoding="utf-8")
    ckpt = make_ckpt(tmp_path / "c.ckpt", data_paths=str(secret))
    export = make_export(ckpt, tmp_path / "export")
    real, read = prepare_module.expand_paths, []
    monkeypatch.setattr(prepare_module, "expand_paths", lambda paths, *a: read.append(paths) or real(paths, *a))

    assert main(["evaluate", "--checkpoint", str(ckpt), "--data.paths", str(given)]) == 0
    assert main(["evaluate", "--checkpoint", str(export), "--data.paths", str(given)]) == 0
    assert str(secret) not in map(str, read)
    assert main(["evaluate", "--checkpoint", str(export)]) == 2  # a model from elsewhere: its paths are never used
    one_line(capsys.readouterr().err, "pass --data.paths")
    assert str(secret) not in map(str, read)
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0  # the user's own run: used, and said
    assert f"reading the data paths stored in the checkpoint: {secret}" in caplog.text  # stderr, outside pytest
    assert str(secret) in map(str, read)


def test_a_training_step_past_memory_is_refused_before_any_data_is_read(files, monkeypatch, capsys):
    """64 windows of 32,768 tokens: the weights and a KV cache row fit in 1 GB, the step's activations do not."""
    from arseq import limits

    monkeypatch.setattr(limits, "memory_budget", lambda: 2**30)
    before = tree(files["root"])
    assert main(["train", "--config", str(files["config"]), "--data.batch_size", "64", "--data.block_size", "32768"]) == 2
    line = one_line(capsys.readouterr().err, "data.batch_size=64 x data.block_size=32768")
    assert "a training step would need" in line and "lower data.batch_size or data.block_size" in line
    assert tree(files["root"]) == before
    model = {"vocab_size": 1, "max_seq_len": 32768, "n_layer": 1, "n_head": 2, "d_model": 16}
    limits.check_training(model, 4, "config", {})  # 4 windows fit


def test_a_run_that_fails_before_writing_leaves_no_version_folder(files, capsys):
    assert main(["train", "--config", str(files["config"]), "--trainer.strategy", "bogus"]) == 2  # Lightning refuses it
    one_line(capsys.readouterr().err, "strategy")
    assert not list((files["root"] / "runs").glob("*/version_*"))


def test_cache_dir_a_file_is_one_line(files, monkeypatch, capsys):
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(files["root"] / "a_file"))
    assert main(["evaluate", "--checkpoint", str(files["ok"]), "--data.paths", str(files["data"])]) == 2
    one_line(capsys.readouterr().err, "a_file")


def test_api_score_refuses_bad_ids_in_one_line(files):
    import arseq

    model = arseq.load(files["ok"])
    assert len(model.score([[1, 3, 4]])) == 1
    for bad, expect in (
        ([[1, 99]], "token id 99"),
        ("abc", "list of token id lists"),
        ([[1, "a"]], "not integer"),
        ([[1, -1]], "token id -1"),
        ([[1.5, 2]], "not integer"),
    ):
        with pytest.raises(DataError, match=expect):
            model.score(bad)
    with pytest.raises(DataError, match="batch_size"):
        model.score([[1, 3]], batch_size=-1)


def test_a_condition_field_given_twice_is_refused():
    from arseq.conditioning import Controls

    controls = Controls(offset=8, fields={"tag": ["A", "B"]})
    assert controls.given(["tag=A"]) == {"tag": "A"}
    with pytest.raises(DataError, match="given twice"):
        controls.given(["tag=A", "tag=B"])


# ---- patterns, motifs and corrupt members of a dataset ------------------------------------------------------
def test_a_pattern_from_a_file_runs_under_a_time_limit(tmp_path):
    from arseq.modalities.protein import ProteinModality

    fasta = tmp_path / "h.fasta"
    fasta.write_text(">" + "a" * 35 + "!\nMKTAYIAKQRQISFVKSHFSRQ\n", encoding="utf-8")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="tag_pattern"):
        list(ProteinModality(tag_pattern="^(a+)+$").proteins([fasta]))  # minutes of backtracking unbounded
    assert time.perf_counter() - t0 < 5
    assert [p[2] for p in ProteinModality(tag_pattern="^(a+)").proteins([fasta])] == ["a" * 35]


def test_a_long_motif_is_a_motif_not_a_file_name():
    from arseq.modalities.protein.fasta import start_motifs

    assert start_motifs(None, "M" * 300) == ["M" * 300]  # ENAMETOOLONG when tried as a path


def test_a_truncated_fasta_gz_among_good_files_is_skipped(tmp_path, capsys):
    import gzip

    records = "".join(f">p{i}\nMKTAYIAKQRQ{'ACDEFGHIKLMNPQRSTVWY'[i % 20] * 8}ISFVKSHFSRQ\n" for i in range(60))
    (tmp_path / "good.fasta").write_text(records, encoding="utf-8")
    packed = gzip.compress(records.encode())
    (tmp_path / "cut.fasta.gz").write_bytes(packed[: len(packed) // 2])
    config = config_file(tmp_path / "p.yaml", {"modality": {"name": "protein"}, "data": {"paths": str(tmp_path), "val_fraction": 0.1}})
    assert main(["prepare", "--config", str(config)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train_items"] + stats["val_items"] == 20  # the good file's distinct proteins
    assert [s["file"] for s in stats["skipped"]] == [str(tmp_path / "cut.fasta.gz")]


def test_training_names_the_items_it_skipped(tmp_path, caplog):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "good.txt").write_text(TEXT * 4, encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    config = train_config(tmp_path / "t.yaml", folder, tmp_path / "runs", max_steps=1)
    with caplog.at_level("WARNING", logger="arseq"):
        assert main(["train", "--config", str(config)]) == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert said == [f"skipped 1 of 2 items in data.paths: {folder / 'empty.txt'}: empty file"]


def test_prepare_skips_a_file_past_its_time_budget(tmp_path, monkeypatch, capsys):
    import glob

    import music21

    shipped = sorted(glob.glob(str(Path(music21.__file__).parent / "midi" / "testPrimitive" / "*.mid")))[:2]
    if len(shipped) < 2:
        pytest.skip("music21's test MIDI files are not installed")
    for i, source in enumerate(shipped):
        shutil.copy(source, tmp_path / f"{i}.mid")
    # music21's reading: the fast path reads such a small file within the shortest budget (1 ms)
    modality = {"name": "music", "workers": 1, "midi_reader": "music21"}
    config = config_file(tmp_path / "m.yaml", {"modality": modality, "data": {"paths": str(tmp_path), "val_fraction": 0.0}})
    monkeypatch.setenv("ARSEQ_FILE_SECONDS", "0.001")  # no file can be parsed this fast: each is skipped with its reason
    assert main(["prepare", "--config", str(config)]) == 2
    line = one_line(capsys.readouterr().err, "no usable item in data.paths")
    assert "per-file budget" in line
