"""`prepare` in worker processes: the same cache entry and bytes for any worker count, bad MIDI files
skipped with their reasons, and a file that crashes or hangs its worker skipped instead of ending the run."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("symusic")

from arseq.data.config import DataConfig  # noqa: E402
from arseq.data.prepare import prepare  # noqa: E402
from arseq.modalities.music import MusicModality  # noqa: E402
from arseq.parallel import Failed, ordered_map  # noqa: E402
from arseq.tokenizers.score import Bar, Events, Note  # noqa: E402
from arseq.tokenizers.score.midi_writing import write_midi  # noqa: E402


def random_piece(seed: int) -> Events:
    """Four voices of random steps in 4/4 or 3/4 (eighths to halves), 8 bars, at a seeded tempo."""
    rng = np.random.default_rng(seed)
    ts = [(4, 4), (3, 4)][seed % 2]
    bar = 24 * 4 * ts[0] // ts[1]
    bars = [Bar(i * bar, bar, ts, int(rng.integers(-3, 4)) if i == 0 else 0, float(rng.integers(60, 120))) for i in range(8)]
    for b in bars[1:]:
        b.key, b.tempo = bars[0].key, bars[0].tempo
    notes = []
    for part, low in enumerate((60, 55, 48, 40)):
        at, pitch = 0, low + int(rng.integers(0, 8))
        while at < 8 * bar:
            dur = int(rng.choice([12, 24, 24, 48]))
            dur = min(dur, 8 * bar - at)
            notes.append(Note(part, at, pitch, dur))
            at, pitch = at + dur, int(np.clip(pitch + rng.integers(-3, 4), low - 5, low + 12))
    return Events(bars, notes, 4)


@pytest.fixture
def midi_folder(tmp_path) -> Path:
    folder = tmp_path / "midi"
    folder.mkdir()
    for i in range(12):
        write_midi(random_piece(i), 24, folder / f"piece_{i:02d}.mid")
    good = (folder / "piece_00.mid").read_bytes()
    (folder / "truncated.mid").write_bytes(good[: len(good) // 2])
    (folder / "empty.mid").write_bytes(b"")
    # a header promising 30,000 tracks, followed by the 5 tracks of a good file
    (folder / "hostile.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 1, 30000, 480) + good[14:])
    return folder


def run(folder: Path, cache: Path, monkeypatch, workers: int) -> tuple:
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(cache))
    modality = MusicModality()
    data = DataConfig(paths=str(folder), val_fraction=0.2, workers=workers)
    prepared = prepare(modality, {"midi_reader": "symusic", "workers": None}, data, progress=False)
    return prepared, {p.name: p.read_bytes() for p in sorted(prepared.directory.iterdir()) if p.is_file()}


def test_workers_do_not_change_the_cache(midi_folder, tmp_path, monkeypatch):
    one, files_one = run(midi_folder, tmp_path / "c1", monkeypatch, workers=1)
    two, files_two = run(midi_folder, tmp_path / "c2", monkeypatch, workers=2)
    assert one.directory.name == two.directory.name  # the same cache key
    assert files_one.keys() == files_two.keys() and all(files_one[k] == files_two[k] for k in files_one)
    assert one.stats["num_items"] == 12 and one.stats["num_notes"] > 0


def test_bad_midi_files_are_skipped_with_reasons(midi_folder, tmp_path, monkeypatch):
    prepared, _ = run(midi_folder, tmp_path / "c", monkeypatch, workers=2)
    reasons = {Path(s["file"]).name: s["reason"] for s in prepared.stats["skipped"]}
    assert set(reasons) == {"truncated.mid", "empty.mid", "hostile.mid"}
    assert "truncated" in reasons["truncated.mid"]
    assert "no MThd header" in reasons["empty.mid"]
    assert "30000 tracks" in reasons["hostile.mid"]


def test_no_spill_files_left(midi_folder, tmp_path, monkeypatch):
    prepared, _ = run(midi_folder, tmp_path / "c", monkeypatch, workers=2)
    assert not list((tmp_path / "c").glob(".tmp-*"))
    assert "tokens.bin" not in {p.name for p in prepared.directory.iterdir()}


def _job(x: int) -> int:
    if x == 3:
        faulthandler.disable()  # (pytest's, inherited: its traceback of the child is noise here)
        os.kill(os.getpid(), signal.SIGSEGV)  # what a crash in a C parser does to its worker
    if x == 5:
        time.sleep(60)  # a hang no SIGALRM reaches
    if x == 7:
        raise ValueError("bad input")
    return x * x


def test_a_crash_or_hang_fails_only_its_file():
    t0 = time.monotonic()
    out = list(ordered_map(_job, range(10), workers=2, seconds=2))
    assert time.monotonic() - t0 < 30
    assert [o for i, o in enumerate(out) if i not in (3, 5, 7)] == [i * i for i in range(10) if i not in (3, 5, 7)]
    assert isinstance(out[3], Failed) and "died" in out[3].reason
    assert isinstance(out[5], Failed) and "still reading after 2 s" in out[5].reason
    assert isinstance(out[7], Failed) and out[7].reason == "ValueError: bad input"


def test_one_worker_runs_here_in_order():
    assert list(ordered_map(lambda x: x + 1, range(5), workers=1)) == [1, 2, 3, 4, 5]


def test_text_prepared_in_workers_is_the_same(tmp_path, monkeypatch):
    from arseq.modalities.text import TextModality

    folder = tmp_path / "text"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.txt").write_text(f"document {i}: " + "the cat sat on the mat. " * (i + 1))
    (folder / "latin1.txt").write_bytes(b"caf\xe9")
    out = []
    for workers in (1, 2):
        monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / f"c{workers}"))
        p = prepare(TextModality(), {"tokenizer": "char"}, DataConfig(paths=str(folder), workers=workers), progress=False)
        out.append((p.directory.name, (p.directory / "train.npy").read_bytes(), json.dumps(p.stats, sort_keys=True)))
    assert out[0] == out[1]
    assert "not UTF-8" in out[0][2]


def test_bad_worker_settings_are_one_line():
    from arseq.errors import DataError

    with pytest.raises(DataError, match="data.workers"):
        DataConfig(workers=0)
    with pytest.raises(DataError, match="data.file_seconds"):
        DataConfig(file_seconds=0)
