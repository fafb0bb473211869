"""Tokenize a dataset once and cache it as memory-mapped token streams.

The cache key hashes the modality and its options, the input files (path, size, mtime), the split
settings and, when one is given, the tokenizer: a second run with the same inputs loads in milliseconds,
and any change to them re-tokenizes. Entries are written to a temporary folder, sealed with checksums and
renamed into place (`cache_entry`): an interrupted run never leaves a half-written entry, and a damaged
one is found on loading and rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arseq.atomic import atomic_write
from arseq.data.cache_entry import commit, damage, discard, seal
from arseq.data.files import expand_paths
from arseq.modalities.base import DataError, Example, Modality, Skipped
from arseq.tokenizers.base import Tokenizer

CACHE_FORMAT = 2  # 2: entries carry checksums.json


@dataclass
class DataConfig:
    """The `data:` section of a config.

    Args:
        paths: training data: a file, folder, glob, or a list of them.
        val_paths: validation data; when absent, `val_fraction` of the items are held out.
        source: a dataset the modality ships or knows (e.g. `bach_chorales`, `digits`).
        val_fraction: share of items held out, chosen with `seed`. With too few items to split,
            the last `val_fraction` of the token stream is held out instead (one text file).
        seed: seed of the split.
        block_size: context length of training windows (the model's max sequence length).
        batch_size: windows per batch.
        num_workers: DataLoader worker processes.
    """

    paths: str | list[str] | None = None
    val_paths: str | list[str] | None = None
    source: str | None = None
    val_fraction: float = 0.1
    seed: int = 1337
    block_size: int = 256
    batch_size: int = 32
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise DataError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.block_size < 2 or self.batch_size < 1:
            raise DataError("data.block_size must be >= 2 and data.batch_size >= 1")


@dataclass
class TokenSplit:
    """Items stored back to back in one token array; item i is tokens[offsets[i]:offsets[i+1]]."""

    tokens: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def items(self) -> list[np.ndarray]:
        return [self.tokens[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])


@dataclass
class Prepared:
    tokenizer: Tokenizer
    train: TokenSplit
    val: TokenSplit
    stats: dict[str, Any]
    directory: Path
    seconds: float = 0.0  # tokenization time of this run (near zero when cached)
    cached: bool = False


def cache_root() -> Path:
    return Path(os.environ.get("ARSEQ_CACHE_DIR") or Path.home() / ".cache" / "arseq")


def _fingerprint(files: list[Path]) -> list[tuple[str, int, int]]:
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return out


def cache_key(modality: Modality, options: dict[str, Any], data: DataConfig, files: list[Path], val_files: list[Path], tokenizer: Tokenizer | None) -> str:
    spec = {
        "format": CACHE_FORMAT,
        "modality": modality.name,
        "options": options,
        "source": data.source,
        "files": _fingerprint(files),
        "val_files": _fingerprint(val_files),
        "split": [data.val_fraction, data.seed] if not val_files else None,
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def _collect(modality: Modality, files: list[Path], source: str | None, tokenizer: Tokenizer, check: bool, desc: str, progress: bool):
    from tqdm import tqdm

    examples: list[Example] = []
    skipped: list[Skipped] = []
    stream = modality.read(files, source, tokenizer, check_roundtrip=check)
    for record in tqdm(stream, desc=desc, unit=" items", disable=None if progress else True, leave=False):
        if isinstance(record, Skipped):
            skipped.append(record)
        elif len(record.tokens) > 0:
            examples.append(record)
        else:
            skipped.append(Skipped(record.name, "no tokens"))
    return examples, skipped


def _write_split(directory: Path, name: str, seqs: list[np.ndarray], dtype: np.dtype, vocab_size: int) -> None:
    for s in seqs:
        if len(s) and (s.min() < 0 or s.max() >= vocab_size):
            bad = int(s.max() if s.max() >= vocab_size else s.min())
            raise DataError(f"the modality produced token id {bad}, outside the tokenizer's vocabulary of {vocab_size}")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.lib.format.open_memmap(directory / f"{name}.npy", mode="w+", dtype=dtype, shape=(int(offsets[-1]),))
    for s, a in zip(seqs, offsets[:-1]):
        tokens[a : a + len(s)] = s
    tokens.flush()
    del tokens
    np.save(directory / f"{name}_offsets.npy", offsets)


def _split(examples: list[Example], data: DataConfig) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    seqs = [np.asarray(e.tokens, dtype=np.int64) for e in examples]
    n = len(seqs)
    n_val = int(round(n * data.val_fraction))
    if data.val_fraction == 0:
        return seqs, [], "none"
    if 1 <= n_val < n:
        order = np.random.default_rng(data.seed).permutation(n)
        val_idx = set(order[:n_val].tolist())
        return [s for i, s in enumerate(seqs) if i not in val_idx], [s for i, s in enumerate(seqs) if i in val_idx], "items"
    stream = np.concatenate(seqs)  # too few items: hold out the tail of the stream
    cut = int(len(stream) * (1 - data.val_fraction))
    return [stream[:cut]], [stream[cut:]], "tail"


def _complete(directory: Path, check_roundtrip: bool) -> bool:
    try:
        stats = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return damage(directory) is None and (not check_roundtrip or "roundtrip_exact" in stats)


def load_split(directory: Path, name: str) -> TokenSplit:
    return TokenSplit(np.load(directory / f"{name}.npy", mmap_mode="r"), np.load(directory / f"{name}_offsets.npy"))


def prepare(
    modality: Modality,
    options: dict[str, Any],
    data: DataConfig,
    tokenizer: Tokenizer | None = None,
    check_roundtrip: bool = False,
    progress: bool = True,
) -> Prepared:
    """Tokenize (or load from cache) the train and validation splits of `data` for `modality`."""
    files = expand_paths(data.paths, modality.suffixes, "data.paths")
    val_files = expand_paths(data.val_paths, modality.suffixes, "data.val_paths")
    if not files and data.source is None:
        raise DataError("no training data: set data.paths (a file, folder or glob) or data.source")
    # With a given tokenizer (resume, evaluate), the entry made when that tokenizer was fitted serves too.
    candidates = [cache_key(modality, options, data, files, val_files, tokenizer)]
    if tokenizer is not None:
        candidates.append(cache_key(modality, options, data, files, val_files, None))
    for key in candidates:
        directory = cache_root() / modality.name / key
        broken = damage(directory)
        if broken is not None:
            print(f"arseq: cache entry {directory} is damaged ({broken}); rebuilding it", file=sys.stderr)
            discard(directory)
            continue
        try:
            stats = json.loads((directory / "meta.json").read_text())
            state = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (check_roundtrip and "roundtrip_exact" not in stats) or (tokenizer is not None and state != json.loads(json.dumps(tokenizer.to_dict()))):
            continue
        return Prepared(modality.load_tokenizer(state), load_split(directory, "train"), load_split(directory, "val"), stats, directory, 0.0, True)
    directory = cache_root() / modality.name / candidates[0]

    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = modality.build_tokenizer(files, data.source)
    examples, skipped = _collect(modality, files, data.source, tokenizer, check_roundtrip, "tokenizing", progress)
    if not examples:
        reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
        raise DataError(f"no usable training items{' (' + reasons + ')' if reasons else ''}")
    if val_files:
        val_examples, val_skipped = _collect(modality, val_files, None, tokenizer, check_roundtrip, "tokenizing val", progress)
        train_seqs = [np.asarray(e.tokens, dtype=np.int64) for e in examples]
        val_seqs = [np.asarray(e.tokens, dtype=np.int64) for e in val_examples]
        split = "files"
        skipped += val_skipped
        everything = examples + val_examples
    else:
        train_seqs, val_seqs, split = _split(examples, data)
        everything = examples
    seconds = time.perf_counter() - t0
    stats: dict[str, Any] = {
        "num_items": len(everything),
        "num_tokens": int(sum(len(e.tokens) for e in everything)),
        "vocab_size": tokenizer.vocab_size,
        "train_items": len(train_seqs),
        "val_items": len(val_seqs),
        "train_tokens": int(sum(len(s) for s in train_seqs)),
        "val_tokens": int(sum(len(s) for s in val_seqs)),
        "split": split,
        "skipped": [asdict(s) for s in skipped],
    }
    checked = [e.exact for e in everything if e.exact is not None]
    if check_roundtrip:
        stats["roundtrip_exact"] = float(np.mean(checked)) if checked else None
        stats["roundtrip_failures"] = [e.name for e in everything if e.exact is False][:50]
    stats.update(modality.summarize(tokenizer, everything))

    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=".tmp-"))
    try:
        dtype = _dtype(tokenizer.vocab_size)
        _write_split(tmp, "train", train_seqs, dtype, tokenizer.vocab_size)
        _write_split(tmp, "val", val_seqs, dtype, tokenizer.vocab_size)
        atomic_write(tmp / "tokenizer.json", json.dumps(tokenizer.to_dict(), ensure_ascii=False))
        atomic_write(tmp / "meta.json", json.dumps(stats, indent=1))
        seal(tmp)
        if directory.exists() and not _complete(directory, check_roundtrip):  # e.g. without roundtrip stats
            discard(directory)  # (a complete one is another process's identical build: commit keeps it)
        commit(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared(tokenizer, load_split(directory, "train"), load_split(directory, "val"), stats, directory, seconds, False)
