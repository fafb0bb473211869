"""A kill during a checkpoint write never loses `last.ckpt`; `last.ckpt` names the current best checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arseq.cli import main

KILL_CONFIG = """
seed: 3
modality: {{name: text, tokenizer: char}}
data: {{paths: {data}, val_fraction: 0, block_size: 32, batch_size: 8}}
model: {{n_layer: 3, n_head: 4, d_model: 128}}
trainer: {{max_steps: {steps}, accelerator: cpu, devices: 1, enable_progress_bar: false,
          enable_model_summary: false, logger: false, default_root_dir: {root}}}
"""


def _listing(*folders: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for folder in folders:
        if folder.is_dir():
            for entry in os.scandir(folder):
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                out[entry.path] = (st.st_size, st.st_mtime_ns)
    return out


def _loads(path: Path) -> int | None:
    try:
        return torch.load(path, weights_only=True)["global_step"]
    except Exception:
        return None


def _kill_during_a_write(argv: list[str], env: dict[str, str], folders: list[Path], last: Path, delay: float) -> None:
    """Start a training run, wait for a complete last.ckpt, then SIGKILL it right after the next write begins."""
    proc = subprocess.Popen([sys.executable, "-m", "arseq", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while _loads(last) is None:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
        before = _listing(*folders)
        while _listing(*folders) == before:  # a write starts: a temporary file appears or a file changes
            assert proc.poll() is None, "training ended before another checkpoint write"
            assert time.monotonic() < deadline, "no second checkpoint write"
            time.sleep(0.001)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm: a TMPDIR on another filesystem")
def test_sigkill_during_checkpoint_writes_never_breaks_last_ckpt(tmp_path, corpus):
    shm = Path("/dev/shm") / f"arseq-kill-{os.getpid()}"
    shm.mkdir()
    env = {**os.environ, "TMPDIR": str(shm), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        previous = None
        for round, delay in enumerate([0.0, 0.002, 0.008]):
            root = tmp_path / f"round{round}"
            config = tmp_path / f"c{round}.yaml"
            config.write_text(KILL_CONFIG.format(data=corpus, steps=100, root=root), encoding="utf-8")
            argv = ["train", "--config", str(config)] + (["--ckpt_path", str(previous)] if previous else [])
            last = root / "text" / "version_0" / "checkpoints" / "last.ckpt"  # without a logger too: a run folder of its own
            _kill_during_a_write(argv, env, [last.parent, shm], last, delay)
            step = _loads(last)
            assert step is not None and step > 0, f"round {round}: last.ckpt unreadable after SIGKILL"
            assert not [p for p in shm.iterdir() if p.is_file()], "a checkpoint-sized temporary file was left in TMPDIR"
            previous = last
        final = tmp_path / "final.yaml"
        final.write_text(KILL_CONFIG.format(data=corpus, steps=step + 5, root=tmp_path / "final"), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-m", "arseq", "train", "--config", str(final), "--ckpt_path", str(previous)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert _loads(tmp_path / "final" / "text" / "version_0" / "checkpoints" / "last.ckpt") == step + 5  # resumed where the kill left it
        assert not [p.name for p in previous.parent.iterdir() if p.name.startswith(".")]  # stale temp files removed
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_last_checkpoint_names_the_best_checkpoint_that_exists(trained, tiny_config, capsys):
    """The tiny run improves at both validations, so the first best file was deleted when the second came."""
    state = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    best = [v["best_model_path"] for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert len(best) == 1 and Path(best[0]).exists() and "step60" in Path(best[0]).name
    assert main(["train", "--config", str(tiny_config), "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--trainer.max_steps", "65"]) == 0
    out = capsys.readouterr().out
    for kind in ("last", "best"):
        assert Path(out.split(f"{kind} checkpoint: ")[1].split()[0]).exists(), out
