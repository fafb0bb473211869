"""Issue 29, the output side: nothing lost (claims, inputs, runs, divergence), full disks, litter and modes,
reports that stay valid JSON and CSV. The crafted inputs come from tests/hostile_files.py; see test_hostile.py
for the refusals of hostile files and flags."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_files import TEXT, make_ckpt, train_config

from arseq.cli import main

HOLD = """
import sys, time
from arseq.outputs import claimed
with claimed(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    (root / "train.txt").write_text(TEXT, encoding="utf-8")
    return make_ckpt(root / "ok.ckpt", data_paths=str(root / "train.txt"))


def last_error(err: str, expect: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and "Traceback" not in err, err[-2000:]
    assert lines[-1].startswith("arseq ") and expect in lines[-1], lines[-1]
    return lines[-1]


def only_line(err: str, expect: str) -> str:
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err
    return last_error(err, expect)


# ---- 3. nothing lost ------------------------------------------------------------------------------------
def test_a_second_run_into_a_claimed_out_refuses_and_a_killed_claim_is_taken_over(ckpt, tmp_path, capsys):
    out = tmp_path / "samples"
    argv = ["generate", "--checkpoint", str(ckpt), "--num-samples", "2", "--max-new-tokens", "4", "--out", str(out)]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another process holds --out
        assert main(argv) == 2
        only_line(capsys.readouterr().err, "another arseq run")
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: its claim file stays behind, its lock does not
        holder.wait()
        holder.stdout.close()
    out.mkdir()
    (out / ".sample_000.txt.k1ll3d.tmp.txt").write_text("half a sample")  # a killed write's temp file
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample_000.txt", "sample_001.txt"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the claim file is gone too


def test_an_out_that_cannot_be_written_is_one_line_naming_it(ckpt, tmp_path, capsys):
    long_name = tmp_path / "new" / ("x" * 300)  # a name no file system takes (255 bytes at most)
    for out in [long_name, *([Path("/proc/arseq-test/x")] if Path("/proc/self").exists() else [])]:
        assert main(["generate", "--checkpoint", str(ckpt), "--max-new-tokens", "4", "--out", str(out)]) == 2
        line = only_line(capsys.readouterr().err, f"{out}: cannot write there (")
        assert line.endswith("; choose another --out") and "claim" not in line
    assert not (tmp_path / "new").exists()  # the folder made for it is gone again


def test_sigterm_during_generate_leaves_no_litter(ckpt, tmp_path):
    import signal
    import time

    out = tmp_path / "samples"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arseq",
            "generate",
            "--checkpoint",
            str(ckpt),
            "--num-samples",
            "3000",
            "--max-new-tokens",
            "30",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    claim = tmp_path / ".samples.arseq-claim"
    deadline = time.monotonic() + 120
    while not claim.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "arseq generate: terminated" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no claim, no temp file, no half-written folder


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_training_run_keeps_its_steps_and_says_how_to_resume(tiny_config, tmp_path, signum, code, word):
    """Lightning ends Ctrl-C with exit 1 and SIGTERM with exit 0 (a stopped run looked finished), and saved nothing
    since the last validation: the steps in between were lost."""
    root = tmp_path / "runs"
    train = [sys.executable, "-m", "arseq", "train", "--config", str(tiny_config), "--trainer.default_root_dir", str(root)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [*train, "--trainer.max_steps", "100000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job of a shell ignores Ctrl-C
    )
    last = root / "text" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:  # the first validation has run
        time.sleep(0.05)
    time.sleep(2)  # steps past that validation: what a stop used to lose
    proc.send_signal(signum)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, err[-2000:]
    line = err.strip().splitlines()[-1]
    step = int(re.fullmatch(rf"arseq train: {word}: stopped at step (\d+); resume with --ckpt_path (.+)", line)[1])
    assert line.endswith(str(last)) and step > 30  # past the validation at step 30, which wrote last.ckpt first
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == step
    resumed = subprocess.run([*train, "--ckpt_path", str(last), "--trainer.max_steps", str(step + 2)], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0 and "Restored all states" in resumed.stderr + resumed.stdout, resumed.stderr[-2000:]


def test_score_never_writes_over_its_inputs(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("abc ab\n", encoding="utf-8")
    assert main(["score", "--checkpoint", str(ckpt), "--data.paths", str(folder), "--out", str(folder / "a.txt"), "--overwrite"]) == 2
    only_line(capsys.readouterr().err, "an input of this command")
    assert (folder / "a.txt").read_text(encoding="utf-8") == "abc ab\n"
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]


def test_runs_never_share_checkpoints_and_divergence_stops_with_one_line(ckpt, tmp_path, capsys):
    from arseq.artifacts.checkpoint import find_checkpoint

    root = tmp_path / "runs"
    config = train_config(tmp_path / "c.yaml", ckpt.parent / "train.txt", root, logger=False)
    assert main(["train", "--config", str(config)]) == 0
    first = root / "text" / "version_0" / "checkpoints" / "last.ckpt"
    before = (first.stat().st_mtime_ns, first.read_bytes())
    assert main(["train", "--config", str(config)]) == 0  # the same root, no logger either
    assert (root / "text" / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert (first.stat().st_mtime_ns, first.read_bytes()) == before
    capsys.readouterr()
    diverging = train_config(
        tmp_path / "d.yaml", ckpt.parent / "train.txt", root, max_steps=30, val_check_interval=2, check_val_every_n_epoch=None, limit_val_batches=1
    )
    text = json.loads(diverging.read_text())
    text["data"]["val_fraction"], text["optim"]["lr"] = 0.2, 1e6
    diverging.write_text(json.dumps(text))
    done = subprocess.run(
        [sys.executable, "-m", "arseq", "train", "--config", str(diverging)], capture_output=True, text=True, timeout=300
    )  # a real process: its exit code, and a stderr no earlier test's logging touched
    assert done.returncode == 2
    last_error(done.stderr, "training diverged")
    saved = list(root.rglob("*.ckpt"))
    assert not [p for p in saved if "nan" in p.name]
    for path in saved:  # no checkpoint, best or last, holds a diverged model
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path
    assert find_checkpoint(root / "text").is_file()


def test_run_folders_resolve_to_the_newest_version_holding_a_checkpoint(ckpt, tmp_path):
    from arseq.artifacts.checkpoint import find_checkpoint

    runs = tmp_path / "text"
    (runs / "version_0" / "checkpoints").mkdir(parents=True)
    make_ckpt(runs / "version_0" / "checkpoints" / "last.ckpt")
    (runs / "version_1" / "checkpoints").mkdir(parents=True)  # killed before its first checkpoint
    (runs / "version_2").mkdir()  # a resume that had nothing to do
    assert find_checkpoint(runs) == runs / "version_0" / "checkpoints" / "last.ckpt"


# ---- 4. full disk: a 1 MB tmpfs ---------------------------------------------------------------------------
@pytest.fixture
def disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Write a filler file until `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(bytes(max(0, free - leave)))


def test_a_full_disk_is_one_line_and_leaves_nothing(ckpt, tmp_path, disk, monkeypatch, capsys):
    big = tmp_path / "big.txt"
    big.write_text(TEXT * 2000, encoding="utf-8")  # ~1.1 MB of text: 2.2 MB of tokens
    config = train_config(tmp_path / "p.yaml", big, tmp_path / "runs")
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(disk / "cache"))
    assert main(["prepare", "--config", str(config)]) == 2
    only_line(capsys.readouterr().err, "No space left on device")
    assert [p.name for p in (disk / "cache").iterdir()] == []  # the temporary entry is gone
    fill(disk, leave=8192)
    runs = [
        ["generate", "--checkpoint", str(ckpt), "--num-samples", "4", "--max-new-tokens", "16", "--out", str(disk / "s")],
        ["export", "--checkpoint", str(ckpt), "--out", str(disk / "e")],
    ]
    for argv in runs:
        assert main(argv) == 2, argv
        only_line(capsys.readouterr().err, "No space left on device")
        assert sorted(p.name for p in disk.iterdir()) == ["cache", "filler"], argv  # no temp file, claim or folder
    small = train_config(tmp_path / "t.yaml", ckpt.parent / "train.txt", disk / "runs", logger=False)
    done = subprocess.run(
        [sys.executable, "-m", "arseq", "train", "--config", str(small)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ARSEQ_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 2  # torch.save's RuntimeError on a full disk is ENOSPC, one line
    last_error(done.stderr, "No space left on device")
    assert not [p for p in disk.rglob(".*")]  # the checkpoint's temporary file is gone


# ---- 7. reports stay JSON ---------------------------------------------------------------------------------
def test_reports_write_null_for_nan_and_infinity(ckpt, capsys):
    from arseq.outputs import to_json

    value = {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.int64(3), "d": np.array([np.nan, 2.0])}
    assert json.loads(to_json(value)) == {"a": None, "b": [None, 1.5], "c": 3, "d": [None, 2.0]}
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data.paths", str(ckpt.parent / "train.txt")]) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in evaluate's JSON"))


# ---- 8. litter and modes ----------------------------------------------------------------------------------
def test_exports_are_0644_under_umask_022(ckpt, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "e").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644, "tokenizer.json": 0o644}
    assert [p.name for p in tmp_path.iterdir()] == ["e"]


def test_a_killed_prepares_temp_folder_is_removed_by_the_next(ckpt, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    stale = cache / ".tmp-4194305-k1ll3d"  # above any pid_max: its process is gone
    stale.mkdir(parents=True)
    (stale / "train.npy").write_bytes(bytes(1000))
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(cache))
    assert main(["prepare", "--config", str(train_config(tmp_path / "p.yaml", ckpt.parent / "train.txt", tmp_path))]) == 0
    assert not stale.exists() and not list(cache.glob(".tmp-*"))


def test_score_csv_neutralizes_formulas_and_writes_non_utf8_names(ckpt, tmp_path, capsys):
    from arseq.outputs import csv_text

    folder = tmp_path / "in"
    folder.mkdir()
    for name in [os.fsdecode(b"\xff\xfe.txt"), "plain.txt"]:
        (folder / name).write_text("abc ab\n", encoding="utf-8")
    assert main(["score", "--checkpoint", str(ckpt), "--data.paths", str(folder), "--out", str(tmp_path / "s.csv")]) == 0
    json.loads(capsys.readouterr().out)
    with open(tmp_path / "s.csv", encoding="utf-8", newline="") as f:  # UTF-8 on disk
        shown = sorted(Path(row["name"]).name for row in csv.DictReader(f))
    assert shown == ["\\xff\\xfe.txt", "plain.txt"]
    # FASTA record ids name protein items: a header ">=HYPERLINK(...)" must reach a spreadsheet as text
    rows = list(csv.DictReader(csv_text([{"name": '=HYPERLINK("http://x")', "nll": -1.5}, {"name": "@SUM(A1)", "nll": 2.0}]).splitlines()))
    assert [r["name"] for r in rows] == ['\'=HYPERLINK("http://x")', "'@SUM(A1)"] and rows[0]["nll"] == "-1.5"
