"""Tokenize a dataset once and cache it as memory-mapped token streams.

The cache key hashes the modality and its options, the input files (path, size, mtime), the split
settings and, when one is given, the tokenizer: a second run with the same inputs loads in milliseconds,
and any change to them re-tokenizes. Entries are written to a temporary folder, sealed with checksums and
renamed into place (`cache_entry`): an interrupted run never leaves a half-written entry, and a damaged
one is found on loading and rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
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
from arseq.data.files import expand_paths
from arseq.data.reading import read_per_file
from arseq.data.spill import Spill, SpilledTokens
from arseq.modalities.base import DataError, Example, Modality, Skipped
from arseq.parallel import configured
from arseq.tokenizers.base import Tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 5  # 2: entries carry checksums.json; 3: conditions (controls.json); 4: image classes as conditions;
# 5: conditions head every training window


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
        conditions: condition fields to train with (control tokens after BOS); None: every field of the
            modality that the data has values for; []: none.
        condition_drop: chance that training hides an item's condition (so the model also samples without one).
        workers: processes reading and tokenizing files (None: the usable cores; 1: in this process). The
            result is the same for any number (same cache entry, same bytes).
        file_seconds: a file still being read after this many seconds is skipped with its reason (None:
            ARSEQ_FILE_SECONDS, else 120); with workers, even a file that hangs in C code.
        fim_rate: share of training windows reordered for fill-in-the-middle (arseq.data.fim); 0 (default):
            none, and no sentinel tokens (the model is exactly what it was without FIM).
        fim_ordering: psm, spm or both (half each): where the suffix goes (arseq.data.fim).
    """

    paths: str | list[str] | None = None
    val_paths: str | list[str] | None = None
    source: str | None = None
    val_fraction: float = 0.1
    seed: int = 1337
    block_size: int = 256
    batch_size: int = 32
    num_workers: int = 0
    conditions: list[str] | None = None
    condition_drop: float = 0.1
    workers: int | None = None
    file_seconds: float | None = None
    fim_rate: float = 0.0
    fim_ordering: str = "psm"

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise DataError(f"data.workers must be >= 1 (or null: the usable cores), got {self.workers}")
        if self.file_seconds is not None and not self.file_seconds > 0:
            raise DataError(f"data.file_seconds must be > 0, got {self.file_seconds}")
        if not 0 <= self.condition_drop <= 1:
            raise DataError(f"data.condition_drop must be in [0, 1], got {self.condition_drop}")
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
    controls: Controls | None = None  # the control tokens of conditioned items (after the tokenizer's ids)

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the tokenizer's ids and the control tokens."""
        return self.tokenizer.vocab_size + (self.controls.size if self.controls else 0)


def cache_root() -> Path:
    """$ARSEQ_CACHE_DIR, else ~/.cache/arseq; a file there is one line, not errors from every path inside it."""
    root = Path(os.environ.get("ARSEQ_CACHE_DIR") or Path.home() / ".cache" / "arseq")
    if root.exists() and not root.is_dir():
        raise DataError(f"cache folder {root} (ARSEQ_CACHE_DIR) is a file, not a folder")
    return root


def _fingerprint(files: list[Path]) -> list[tuple[str, int, int]]:
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return out


def cache_key(
    modality: Modality,
    options: dict[str, Any],
    data: DataConfig,
    files: list[Path],
    val_files: list[Path],
    tokenizer: Tokenizer | None,
    controls: Controls | None = None,
) -> str:
    spec = {
        "format": CACHE_FORMAT,
        "modality": modality.name,
        "options": {k: v for k, v in options.items() if k != "workers"},  # how many processes read: not the data
        "source": data.source,
        "files": _fingerprint(files),
        "val_files": _fingerprint(val_files),
        "split": [data.val_fraction, data.seed] if not val_files else None,
        "conditions": data.conditions,
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
    }
    if controls is not None:
        spec["controls"] = controls.to_dict()
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def collect(
    modality: Modality, files: list[Path], source: str | None, tokenizer: Tokenizer, check: bool, desc: str, progress: bool, data: DataConfig
):
    """Read and tokenize in `data.workers` processes; items' ids are spilled to disk as they come, so
    memory stays flat (`arseq.data.spill`)."""
    spill = Spill.create(cache_root())
    try:
        return _collect_into(spill, modality, files, source, tokenizer, check, desc, progress, data)
    finally:
        spill.remove()  # the items' memory maps keep their pages readable


def _collect_into(
    spill: Spill,
    modality: Modality,
    files: list[Path],
    source: str | None,
    tokenizer: Tokenizer,
    check: bool,
    desc: str,
    progress: bool,
    data: DataConfig,
):
    from tqdm import tqdm

    examples: list[tuple[Example, int, int]] = []
    skipped: list[Skipped] = []
    with configured(data.workers, data.file_seconds):
        if source is None and getattr(modality, "reads_files_independently", False):
            stream = read_per_file(modality, files, tokenizer, check)
        else:
            stream = modality.read(files, source, tokenizer, check_roundtrip=check)
        unit = " files" if source is None else " items"
        for record in tqdm(stream, desc=desc, unit=unit, disable=None if progress else True, leave=False):
            if isinstance(record, Skipped):
                skipped.append(record)
            elif len(record.tokens) > 0:
                start, stop = spill.add(record.tokens)
                record.tokens = ()
                examples.append((record, start, stop))
            else:
                skipped.append(Skipped(record.name, "no tokens"))
    spill.close()
    for e, start, stop in examples:
        e.tokens = spill.view(start, stop)
    return [e for e, _, _ in examples], skipped


def _write_split(directory: Path, name: str, seqs: list[Any], dtype: np.dtype, vocab_size: int) -> None:
    """Write items (arrays, or ids spilled to disk) back to back, one at a time (never all in memory)."""
    for s in map(np.asarray, seqs):
        if len(s) and (s.min() < 0 or s.max() >= vocab_size):
            bad = int(s.max() if s.max() >= vocab_size else s.min())
            raise DataError(f"the modality produced token id {bad}, outside the tokenizer's vocabulary of {vocab_size}")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Written, not memory-mapped: a full disk is then ENOSPC (one line), where writing through a map died by
    # SIGBUS; the space is reserved first, so a disk too small fails before a byte of the tokens is written.
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (int(offsets[-1]),)}
    with open(directory / f"{name}.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        _reserve(f, f.tell() + int(offsets[-1]) * dtype.itemsize)
        for s in seqs:
            f.write(np.asarray(s, dtype=dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    np.save(directory / f"{name}_offsets.npy", offsets)


def _reserve(f: Any, size: int) -> None:
    """Allocate `size` bytes for the file now (ENOSPC here, not midway); a no-op where unsupported."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except AttributeError:
        return
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise


def remove_stale_builds(root: Path) -> list[Path]:
    """Delete the temporary entry folders (`.tmp-PID-*`, `.trash-*`) of prepare runs that were killed:
    their process is gone, so no one will finish or remove them (one was ~100 MB, kept forever)."""
    removed = []
    for folder in [*root.glob(".tmp-*"), *root.glob("*/.trash-*")]:
        pid = folder.name.split("-")[1] if folder.name.startswith(".tmp-") else ""
        alive = pid.isdigit() and _alive(int(pid))
        if folder.is_dir() and not alive and (pid.isdigit() or time.time() - folder.stat().st_mtime > 3600):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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
    candidates = [cache_key(modality, options, data, files, val_files, tokenizer, controls)]
    if tokenizer is not None:
        candidates.append(cache_key(modality, options, data, files, val_files, None))
    for key in candidates:
        directory = cache_root() / modality.name / key
        broken = damage(directory)
        if broken is not None:
            log.warning(f"arseq: cache entry {directory} is damaged ({broken}); rebuilding it")
            discard(directory)
            continue
        try:
            stats = json.loads((directory / "meta.json").read_text())
            state = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (check_roundtrip and "roundtrip_exact" not in stats) or (tokenizer is not None and state != json.loads(json.dumps(tokenizer.to_dict()))):
            continue
        stored = Controls.from_dict(json.loads((directory / "controls.json").read_text()))
        if controls is not None and stored != controls:
            continue
        return Prepared(
            modality.load_tokenizer(state), load_split(directory, "train"), load_split(directory, "val"), stats, directory, 0.0, True, stored
        )
    directory = cache_root() / modality.name / candidates[0]

    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = modality.build_tokenizer(files, data.source)
    examples, skipped = collect(modality, files, data.source, tokenizer, check_roundtrip, "tokenizing", progress, data)
    if not examples:
        reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
        raise DataError(f"no usable training items{' (' + reasons + ')' if reasons else ''}")
    controls = _controls(modality, data, tokenizer, examples, controls)
    if val_files:
        val_examples, val_skipped = collect(modality, val_files, None, tokenizer, check_roundtrip, "tokenizing val", progress, data)
        _condition(val_examples, controls)
        train_seqs = [e.tokens for e in examples]
        val_seqs = [e.tokens for e in val_examples]
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
    if controls is not None:
        stats["conditions"] = {
            f: {"values": controls.counts[f], "items_without": sum(f not in e.conditions for e in everything)} for f in controls.fields
        }

    cache_root().mkdir(parents=True, exist_ok=True)
    remove_stale_builds(cache_root())
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=f".tmp-{os.getpid()}-"))
    try:
        vocab = tokenizer.vocab_size + (controls.size if controls else 0)
        _write_split(tmp, "train", train_seqs, _dtype(vocab), vocab)
        _write_split(tmp, "val", val_seqs, _dtype(vocab), vocab)
        atomic_write(tmp / "tokenizer.json", json.dumps(tokenizer.to_dict(), ensure_ascii=False))
        atomic_write(tmp / "controls.json", json.dumps(controls.to_dict() if controls else None))
        atomic_write(tmp / "meta.json", json.dumps(stats, indent=1))
        seal(tmp)
        if directory.exists() and not _complete(directory, check_roundtrip):  # e.g. without roundtrip stats
            discard(directory)  # (a complete one is another process's identical build: commit keeps it)
        commit(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Prepared(tokenizer, load_split(directory, "train"), load_split(directory, "val"), stats, directory, seconds, False, controls)
