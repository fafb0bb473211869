"""Images and proteins prepared in worker processes (`data.workers`): the same cache entry and bytes as one
worker, unusable files skipped with their reasons, and a file that crashes its worker skipped, not fatal."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arseq.data.config import DataConfig
from arseq.data.prepare import prepare
from arseq.modalities.image import ImageModality
from arseq.modalities.image import reading as image_reading
from arseq.modalities.protein import ProteinModality, encoding

IMAGE_OPTIONS = {"mode": "L", "size": 8, "patch_size": 1, "codebook_size": 16}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes of random 12x10 images, a file that is not an image and an empty class folder."""
    rng = np.random.default_rng(0)
    for i in range(10):
        folder = tmp_path / "images" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    (tmp_path / "images" / "dogs" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "images" / "birds").mkdir()
    return tmp_path / "images"


def prepared(modality, options, folder: Path, cache: Path, monkeypatch, workers: int) -> tuple[str, dict[str, bytes], dict]:
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(cache))
    p = prepare(modality, options, DataConfig(paths=str(folder), workers=workers, val_fraction=0.2), check_roundtrip=True, progress=False)
    files = {f.name: f.read_bytes() for f in sorted(p.directory.iterdir()) if f.is_file()}
    return p.directory.name, files, p.stats


def test_images_prepared_in_workers_are_the_same(image_folder, tmp_path, monkeypatch):
    import torch

    x = torch.randn(1500, 1500, dtype=torch.float64)
    assert (x @ x).isfinite().all()  # this process's torch thread pool has run, as after a large codebook fit
    monkeypatch.setenv("ARSEQ_FILE_SECONDS", "30")  # a worker hanging on the pool's lock fails in 30 s, not 120
    one = prepared(ImageModality(**IMAGE_OPTIONS), IMAGE_OPTIONS, image_folder, tmp_path / "c1", monkeypatch, workers=1)
    two = prepared(ImageModality(**IMAGE_OPTIONS), IMAGE_OPTIONS, image_folder, tmp_path / "c2", monkeypatch, workers=2)
    assert one[0] == two[0]  # the same cache key
    assert one[1].keys() == two[1].keys() and all(one[1][k] == two[1][k] for k in one[1])  # the same bytes
    stats = one[2]
    assert stats["images"] == 10 and stats["labels"] == {"cats": 5, "dogs": 5}
    reasons = {Path(s["file"]).name: s["reason"] for s in stats["skipped"]}
    assert set(reasons) == {"broken.png", "birds"} and "empty class folder" in reasons["birds"]


def _crash_on(name: str):
    real = image_reading.open_image

    def open_image(path: Path):
        if path.name == name:
            faulthandler.disable()  # (pytest's, inherited: its traceback of the child is noise here)
            os.kill(os.getpid(), signal.SIGSEGV)  # what a crash in a C decoder does to its worker
        return real(path)

    return open_image


def test_an_image_that_crashes_its_worker_is_skipped(image_folder, tmp_path, monkeypatch):
    modality = ImageModality(**IMAGE_OPTIONS)
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "c"))
    data = DataConfig(paths=str(image_folder), workers=2, val_fraction=0.2)
    tokenizer = prepare(modality, IMAGE_OPTIONS, data, progress=False).tokenizer  # fitted without the crash
    monkeypatch.setattr(image_reading, "open_image", _crash_on("03.png"))  # forked workers inherit it
    monkeypatch.setenv("ARSEQ_CACHE_DIR", str(tmp_path / "c2"))
    p = prepare(modality, IMAGE_OPTIONS, data, tokenizer=tokenizer, progress=False)
    reasons = {Path(s["file"]).name: s["reason"] for s in p.stats["skipped"]}
    assert p.stats["images"] == 9 and "died" in reasons["03.png"], json.dumps(reasons)


FASTA = "/work/shared/data/proteins_train.fasta"  # real data: 2,768 proteins


def protein_folder(tmp_path: Path) -> Path:
    """The shared training FASTA's first 600 records, a copy of some (duplicates), a bad record and a non-FASTA file."""
    folder = tmp_path / "fasta"
    folder.mkdir()
    records = Path(FASTA).read_text().split("\n>")[:600]
    (folder / "a.fasta").write_text("\n>".join(records[:400]) + "\n")
    (folder / "b.fasta").write_text(">" + "\n>".join(records[350:600]) + "\n>bad\nMKT*LLV\n")
    (folder / "c.fasta").write_text("this is not FASTA\n")
    return folder


@pytest.mark.skipif(not Path(FASTA).is_file(), reason="needs /work/shared/data")
@pytest.mark.parametrize("options", [{"tokenizer": "protein"}, {"tokenizer": "protein_bpe", "bpe_vocab_size": 64}], ids=["residues", "bpe"])
def test_proteins_prepared_in_workers_are_the_same(tmp_path, monkeypatch, options):
    monkeypatch.setattr(encoding, "CHUNK", 64)  # several chunks a file
    folder = protein_folder(tmp_path)
    one = prepared(ProteinModality(**options), options, folder, tmp_path / "c1", monkeypatch, workers=1)
    two = prepared(ProteinModality(**options), options, folder, tmp_path / "c2", monkeypatch, workers=2)
    assert one[0] == two[0] and one[1].keys() == two[1].keys() and all(one[1][k] == two[1][k] for k in one[1])
    stats = one[2]
    assert stats["num_items"] == 600 and stats["filtered"] == {"duplicates": 50}  # records[350:400] are in both files
    reasons = {Path(s["file"]).name: s["reason"] for s in stats["skipped"]}
    assert set(reasons) == {"b.fasta", "c.fasta"} and "'*'" in reasons["b.fasta"]


@pytest.mark.skipif(not Path(FASTA).is_file(), reason="needs /work/shared/data")
def test_a_chunk_that_crashes_its_worker_skips_its_proteins(tmp_path, monkeypatch):
    real = encoding._encode_chunk

    def crash_on_second(tokenizer, check, chunk):
        if chunk[0] == second:  # the second chunk
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(tokenizer, check, chunk)

    monkeypatch.setattr(encoding, "CHUNK", 100)
    monkeypatch.setattr(encoding, "_encode_chunk", crash_on_second)  # forked workers inherit it
    folder = protein_folder(tmp_path)
    second = list(ProteinModality().proteins(sorted(folder.glob("*.fasta"))))[100]  # a protein, not a Skipped
    _, _, stats = prepared(ProteinModality(), {}, folder, tmp_path / "c", monkeypatch, workers=2)
    crashed = [s for s in stats["skipped"] if "encoding" in s["reason"]]
    assert stats["num_items"] == 500 and len(crashed) == 100 and "died" in crashed[0]["reason"]


def _matmul(seed: int) -> float:
    import torch

    g = torch.Generator().manual_seed(seed)
    y, c = torch.randn(1024, 64, generator=g, dtype=torch.float64), torch.randn(256, 64, generator=g, dtype=torch.float64)
    return float((y @ c.T).sum())  # big enough for torch to run it on its thread pool


def test_torch_in_workers_after_torch_ran_here():
    """A parent that ran torch on its thread pool (the image codebook's k-means) forks workers whose
    first parallel op would hang on the pool's lock; the workers run torch on one thread instead."""
    import torch

    from arseq.parallel import Failed, ordered_map

    x = torch.randn(1500, 1500, dtype=torch.float64)
    assert (x @ x).isfinite().all()
    threads = torch.get_num_threads()
    out = list(ordered_map(_matmul, range(4), workers=2, seconds=10))
    assert not [o for o in out if isinstance(o, Failed)], out
    assert out == pytest.approx([_matmul(i) for i in range(4)]) and torch.get_num_threads() == threads  # this process keeps its threads
