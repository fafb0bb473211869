"""Tokenize a dataset once and cache it as memory-mapped token streams.

The cache key hashes the modality and its options, the input files (path, size, mtime), the split
settings and, when one is given, the tokenizer: a second run with the same inputs loads in milliseconds,
and any change to them re-tokenizes. Entries are written to a temporary folder, sealed with checksums and
renamed into place (`cache_entry`): an interrupted run never leaves a half-written entry, and a damaged
one is found on loading and rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arseq.atomic import atomic_write
from arseq.conditioning import Controls
from arseq.data.cache_entry import commit, damage, discard, seal
from arseq.data.cache_key import cache_key, cache_root, remove_stale_builds
from arseq.data.config import DataConfig
from arseq.data.files import expand_paths
from arseq.data.spill import SpilledTokens
from arseq.data.streams import collect, dtype_for, write_split
from arseq.modalities.base import DataError, Example, Modality
from arseq.tokenizers.base import Tokenizer

log = logging.getLogger(__name__)


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
    controls: Controls | None = None  # the control tokens of conditioned items (after the tokenizer's ids)

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the tokenizer's ids and the control tokens."""
        return self.tokenizer.vocab_size + (self.controls.size if self.controls else 0)


def _controls(modality: Modality, data: DataConfig, tokenizer: Tokenizer, examples: list[Example], given: Controls | None) -> Controls | None:
    """Learn the control tokens of `data.conditions` from the training items (unless given), and put them in every item."""
    if given is not None:
        _condition(examples, given)
        return given
    names = list(modality.condition_fields) if data.conditions is None else list(data.conditions)
    unknown = [n for n in names if n not in modality.condition_fields]
    if unknown:
        known = ", ".join(modality.condition_fields) or "none"
        raise DataError(f"data.conditions: the {modality.name} modality has no condition field {', '.join(unknown)} (it has: {known})")
    controls = Controls.learn(tokenizer.vocab_size, names, [e.conditions for e in examples], data.condition_drop)
    if controls is None and data.conditions:
        raise DataError(f"data.conditions {data.conditions}: no training item has a value for them")
    if controls is not None:
        missing = {f: sum(f not in e.conditions for e in examples) for f in controls.fields}
        for f, n in missing.items():
            if n:
                log.warning(f"arseq: {n} of {len(examples)} items have no {f} (trained with the unknown {f} token)")
    _condition(examples, controls)
    return controls


def _condition(examples: list[Example], controls: Controls | None) -> None:
    if controls is not None:
        for e in examples:
            ids = controls.ids(e.conditions)
            e.tokens = e.tokens.with_prefix(ids) if isinstance(e.tokens, SpilledTokens) else controls.insert(list(e.tokens), ids)


def _split(examples: list[Example], data: DataConfig) -> tuple[list[Any], list[Any], str]:
    seqs = [e.tokens if isinstance(e.tokens, SpilledTokens) else np.asarray(e.tokens, dtype=np.int64) for e in examples]
    n = len(seqs)
    n_val = int(round(n * data.val_fraction))
    if data.val_fraction == 0:
        return seqs, [], "none"
    if 1 <= n_val < n:
        order = np.random.default_rng(data.seed).permutation(n)
        val_idx = set(order[:n_val].tolist())
        return [s for i, s in enumerate(seqs) if i not in val_idx], [s for i, s in enumerate(seqs) if i in val_idx], "items"
    stream = np.concatenate([np.asarray(q, dtype=np.int64) for q in seqs])  # too few items: hold out the tail of the stream
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
    controls: Controls | None = None,
) -> Prepared:
    """Tokenize (or load from cache) the train and validation splits of `data` for `modality`. A given
    tokenizer and control tokens (a trained model's: resume, evaluate) are used instead of fitted ones."""
    files = expand_paths(data.paths, modality.suffixes, "data.paths")
    val_files = expand_paths(data.val_paths, modality.suffixes, "data.val_paths")
    if not files and data.source is None:
        raise DataError("no training data: set data.paths (a file, folder or glob) or data.source")
    # With a given tokenizer (resume, evaluate), the entry made when that tokenizer was fitted serves too.
    keys = [cache_key(modality, options, data, files, val_files, tokenizer, controls)]
    if tokenizer is not None:
        keys.append(cache_key(modality, options, data, files, val_files, None))
    for key in keys:
        found = _cached(modality, cache_root() / modality.name / key, tokenizer, controls, check_roundtrip)
        if found is not None:
            return found
    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = modality.build_tokenizer(files, data.source)
    read = _read(modality, data, files, val_files, tokenizer, controls, check_roundtrip, progress)
    seconds = time.perf_counter() - t0
    stats = _stats(modality, read, check_roundtrip)
    directory = cache_root() / modality.name / keys[0]
    _store(directory, read, stats, check_roundtrip)
    return Prepared(read.tokenizer, load_split(directory, "train"), load_split(directory, "val"), stats, directory, seconds, False, read.controls)


def _cached(modality: Modality, directory: Path, tokenizer: Tokenizer | None, controls: Controls | None, check_roundtrip: bool) -> Prepared | None:
    """The complete cache entry in `directory` when it fits what is asked (the same tokenizer and control
    tokens, round-trip figures if asked for); a damaged one is removed."""
    broken = damage(directory)
    if broken is not None:
        log.warning(f"arseq: cache entry {directory} is damaged ({broken}); rebuilding it")
        discard(directory)
        return None
    try:
        stats = json.loads((directory / "meta.json").read_text())
        state = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (check_roundtrip and "roundtrip_exact" not in stats) or (tokenizer is not None and state != json.loads(json.dumps(tokenizer.to_dict()))):
        return None
    stored = Controls.from_dict(json.loads((directory / "controls.json").read_text()))
    if controls is not None and stored != controls:
        return None
    return Prepared(modality.load_tokenizer(state), load_split(directory, "train"), load_split(directory, "val"), stats, directory, 0.0, True, stored)


@dataclass
class _Read:
    """The items read and split, before they are stored."""

    tokenizer: Tokenizer
    controls: Controls | None
    everything: list[Example]
    train: list[Any]
    val: list[Any]
    split: str  # files, items, tail or none
    skipped: list[Any]


def _read(
    modality: Modality,
    data: DataConfig,
    files: list[Path],
    val_files: list[Path],
    tokenizer: Tokenizer,
    given: Controls | None,
    check_roundtrip: bool,
    progress: bool,
) -> _Read:
    """Tokenize the training (and validation) files, put in the control tokens, and split."""
    examples, skipped = collect(modality, files, data.source, tokenizer, check_roundtrip, "tokenizing", progress, data)
    if not examples:
        reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
        raise DataError(f"no usable item in data.paths{' (' + reasons + ')' if reasons else ''}")
    controls = _controls(modality, data, tokenizer, examples, given)
    if not val_files:
        train, val, split = _split(examples, data)
        return _Read(tokenizer, controls, examples, train, val, split, skipped)
    val_examples, val_skipped = collect(modality, val_files, None, tokenizer, check_roundtrip, "tokenizing val", progress, data)
    _condition(val_examples, controls)
    train, val = [e.tokens for e in examples], [e.tokens for e in val_examples]
    return _Read(tokenizer, controls, examples + val_examples, train, val, "files", skipped + val_skipped)


def _item_tokens(lengths: list[int]) -> dict[str, int]:
    """Tokens per item (a piece, an image, a protein, a file), as `arseq train` records them in the checkpoint:
    a modality's sampling budget can follow its data."""
    return {"items": len(lengths), "median": int(np.median(lengths)), "p95": int(np.percentile(lengths, 95))}


def _stats(modality: Modality, read: _Read, check_roundtrip: bool) -> dict[str, Any]:
    """What `arseq prepare` prints: sizes of the splits, what was skipped and why, the modality's figures."""
    everything, tokenizer, controls = read.everything, read.tokenizer, read.controls
    stats: dict[str, Any] = {
        "num_items": len(everything),
        "num_tokens": int(sum(len(e.tokens) for e in everything)),
        "vocab_size": tokenizer.vocab_size,
        "train_items": len(read.train),
        "val_items": len(read.val),
        "train_tokens": int(sum(len(s) for s in read.train)),
        "val_tokens": int(sum(len(s) for s in read.val)),
        "split": read.split,
        "skipped": [asdict(s) for s in read.skipped],
        "item_tokens": _item_tokens([len(e.tokens) for e in everything]),
    }
    if check_roundtrip:
        checked = [e.exact for e in everything if e.exact is not None]
        stats["roundtrip_exact"] = float(np.mean(checked)) if checked else None
        stats["roundtrip_failures"] = [e.name for e in everything if e.exact is False][:50]
    stats.update(modality.summarize(tokenizer, everything))
    if controls is not None:
        stats["conditions"] = {
            f: {"values": controls.counts[f], "items_without": sum(f not in e.conditions for e in everything)} for f in controls.fields
        }
    return stats


def _store(directory: Path, read: _Read, stats: dict[str, Any], check_roundtrip: bool) -> None:
    """Write the entry in a temporary folder, seal it and rename it into place (all or nothing)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    remove_stale_builds(cache_root())
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=f".tmp-{os.getpid()}-"))
    try:
        vocab = read.tokenizer.vocab_size + (read.controls.size if read.controls else 0)
        write_split(tmp, "train", read.train, dtype_for(vocab), vocab)
        write_split(tmp, "val", read.val, dtype_for(vocab), vocab)
        atomic_write(tmp / "tokenizer.json", json.dumps(read.tokenizer.to_dict(), ensure_ascii=False))
        atomic_write(tmp / "controls.json", json.dumps(read.controls.to_dict() if read.controls else None))
        atomic_write(tmp / "meta.json", json.dumps(stats, indent=1))
        seal(tmp)
        if directory.exists() and not _complete(directory, check_roundtrip):  # e.g. without roundtrip stats
            discard(directory)  # (a complete one is another process's identical build: commit keeps it)
        commit(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
