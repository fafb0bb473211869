"""A damaged token-cache entry is found and rebuilt with one warning; concurrent builds both succeed."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from arseq.data.config import DataConfig
from arseq.data.prepare import prepare
from arseq.modalities.text import TextModality


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "cache"))


def _corpus(folder: Path) -> DataConfig:
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(f"document number {i} is about cats and dogs. " * 20, encoding="utf-8")
    return DataConfig(paths=str(folder), val_fraction=0.25, seed=1)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size, a different token id
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        ("train.npy", _truncate),
        ("train_offsets.npy", _truncate),
        ("val.npy", _flip_last_byte),
        ("train.npy", _flip_last_byte),
        ("meta.json", lambda p: p.unlink()),
        ("checksums.json", lambda p: p.write_text("{")),
    ],
    ids=["truncated tokens", "truncated offsets", "same-size val", "same-size train", "missing meta", "bad manifest"],
)
def test_damaged_entry_is_rebuilt_with_one_warning(tmp_path, damage, caplog):
    name, spoil = damage
    data = _corpus(tmp_path / "docs")
    first = prepare(TextModality(), {}, data, progress=False)
    expected = np.array(first.train.tokens), np.array(first.val.tokens)
    del first
    entry = next((Path(os.environ["ARSEQ_CACHE_DIR"]) / "text").iterdir())
    spoil(entry / name)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arseq"):
        again = prepare(TextModality(), {}, data, progress=False)
    err = [r.getMessage() for r in caplog.records]
    assert not again.cached and len(err) == 1 and "is damaged" in err[0] and "rebuilding" in err[0], err
    assert np.array_equal(again.train.tokens, expected[0]) and np.array_equal(again.val.tokens, expected[1])
    assert prepare(TextModality(), {}, data, progress=False).cached  # the rebuilt entry is whole


def _build(paths: str, cache: str, queue) -> None:
    os.environ["ARSEQ_CACHE_DIR"] = cache
    prepared = prepare(TextModality(), {}, DataConfig(paths=paths, val_fraction=0.25, seed=1), progress=False)
    queue.put((np.asarray(prepared.train.tokens).tobytes(), str(prepared.directory)))


def test_two_processes_building_one_entry_both_succeed_identically(tmp_path):
    data = _corpus(tmp_path / "docs")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(data.paths, os.environ["ARSEQ_CACHE_DIR"], queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({r[0] for r in results}) == 1 and len({r[1] for r in results}) == 1
    entries = [p for p in (Path(os.environ["ARSEQ_CACHE_DIR"]) / "text").iterdir()]
    assert [p.name for p in entries] == [Path(results[0][1]).name]  # no temporary or trash folder left
