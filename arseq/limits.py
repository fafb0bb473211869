"""Sizes read from files and flags, checked against what they would allocate before anything is allocated.

A 200 KB checkpoint can name a model of 2,000 layers, an HF config a context of 10^10 positions, a flag a
billion samples: built as asked, each takes all memory and ends in a traceback or the OOM killer. Here each
size is turned into the bytes it would take (parameters x dtype, RoPE tables and one row of KV cache, token
buffers) and compared with the memory this process may use; too much is one line naming the field.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from arseq.errors import DataError

FLOAT_BYTES = 4  # models are built in float32 before any --dtype cast
TOKEN_BYTES = 40  # a token kept in Python lists (int object + list slot), what samples and prompts cost
MAX_FLAG_COUNT = 10_000_000  # counts (samples, draft tokens) past this are typos, whatever the memory
# Floats a training step keeps per token, per layer and unit of width, for the backward pass: 33 measured (eager,
# float32, CPU; 1-8 layers, width 256-512, context 1-2 K); set lower so that a compiled or mixed-precision step,
# which keeps less, is never refused.
ACTIVATION_FLOATS = 24
SIZE_FIELDS = ("vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "mlp_hidden")


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def memory_budget() -> int:
    """Bytes this process may still allocate: physical memory, capped by a cgroup limit and by RLIMIT_AS
    (less the address space already mapped, which is what that limit counts)."""
    try:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        budget = 2**40
    limit = _cgroup_limit()
    if limit is not None:
        budget = min(budget, limit)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            mapped = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            mapped = 0
        budget = min(budget, max(0, soft - mapped))
    return budget


def _size_field(cfg: Mapping[str, Any], key: str, where: str, name: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def model_bytes(
    cfg: Mapping[str, Any], batch: int = 1, where: str = "model", prefix: str = "model.", names: Mapping[str, str] | None = None
) -> dict[str, int]:
    """The bytes a TransformerConfig's keyword arguments allocate, per cause: parameters (float32), and the
    context's RoPE tables plus a KV cache of `batch` rows. Raises on a size that is not a positive integer."""

    def field(key: str) -> int:
        return _size_field(cfg, key, where, (names or {}).get(key, prefix + key))

    vocab, ctx, layers, heads, width = (field(k) for k in SIZE_FIELDS[:5])
    hidden = field("mlp_hidden") if cfg.get("mlp_hidden") is not None else 32 * -(-8 * width // (3 * 32))  # SwiGLU's default
    per_layer = 4 * width * width + 3 * width * hidden + 2 * width
    embed = vocab * width * (1 if cfg.get("tie_weights", True) else 2)
    return {
        "layers": per_layer * layers * FLOAT_BYTES,
        "vocabulary": embed * FLOAT_BYTES,
        "context": (ctx * width // max(1, heads) + 2 * layers * ctx * width * batch) * FLOAT_BYTES,
    }


def check_model(cfg: Mapping[str, Any], where: str, prefix: str = "model.", batch: int = 1, names: Mapping[str, str] | None = None) -> None:
    """Refuse, naming the field, a model config whose weights and one KV-cache row do not fit in memory.
    `names` spells a field as the user gave it (max_seq_len comes from data.block_size in a config)."""
    if not isinstance(cfg, Mapping):
        raise DataError(f"{where}: the model config is not a mapping ({type(cfg).__name__})")
    parts = model_bytes(cfg, batch, where, prefix, names)
    total, budget = sum(parts.values()), memory_budget()
    if total <= budget:
        return
    cause = max(parts, key=parts.__getitem__)
    fields = {"layers": ("n_layer", "d_model", "mlp_hidden"), "vocabulary": ("vocab_size", "d_model"), "context": ("max_seq_len",)}[cause]
    named = ", ".join(f"{(names or {}).get(f, prefix + f)}={cfg[f]}" for f in fields if cfg.get(f) is not None)
    raise DataError(f"{where}: {named} would need {_gb(total)} ({cause}: {_gb(parts[cause])}), more than the {_gb(budget)} of memory here")


def check_training(cfg: Mapping[str, Any], batch: int, where: str, names: Mapping[str, str]) -> None:
    """Refuse a training step that cannot fit in this machine's memory: the activations `batch` windows of the
    context keep for the backward pass, and the weights with their gradients and AdamW's two moments.
    `names` spells the fields as the config does (data.block_size, data.batch_size)."""
    parts = model_bytes(cfg, 1, where, "model.", names)
    layers, width, ctx = (int(cfg[k]) for k in ("n_layer", "d_model", "max_seq_len"))
    need = batch * ctx * layers * width * ACTIVATION_FLOATS * FLOAT_BYTES + 4 * (parts["layers"] + parts["vocabulary"])
    budget = memory_budget()
    if need > budget:
        rows, length = names.get("batch_size", "batch_size"), names.get("max_seq_len", "max_seq_len")
        raise DataError(
            f"{where}: {rows}={batch} x {length}={ctx} on {layers} layers of width {width}: a training step would need "
            f"{_gb(need)} or more, more than the {_gb(budget)} of memory here (lower {rows} or {length})"
        )


def check_count(flag: str, value: int, per_item_bytes: int, minimum: int = 1) -> None:
    """A count from a flag (samples, draft tokens...): at least `minimum`, and its buffers within memory."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{flag} must be an integer, got {value!r}")
    if value < minimum:
        raise DataError(f"{flag} must be >= {minimum}, got {value}")
    if value > MAX_FLAG_COUNT:
        raise DataError(f"{flag} {value:,}: more than {MAX_FLAG_COUNT:,} (lower {flag})")
    need, budget = value * per_item_bytes, memory_budget()
    if need > budget:
        raise DataError(f"{flag} {value:,} would need {_gb(need)} of buffers; this machine has {_gb(budget)} (lower {flag})")


def check_zip_entries(path: Path) -> None:
    """A checkpoint is a zip file: refuse one whose entries would inflate past memory before torch.load
    reads them (torch writes entries stored, not compressed, so a large compressed entry is no checkpoint
    of ours). Files that are not zips (legacy pickles) are left to torch.load."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load says what is wrong with it
    total = sum(i.file_size for i in infos)
    packed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED and i.file_size > 64 * max(1, i.compress_size)]
    budget = memory_budget()
    if packed:
        i = max(packed, key=lambda i: i.file_size)
        raise DataError(f"{path}: zip entry {i.filename!r} inflates {i.compress_size:,} bytes to {i.file_size:,}; not a checkpoint torch wrote")
    if total > budget:
        raise DataError(f"{path}: its entries hold {_gb(total)}, more than the {_gb(budget)} of memory here")


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused in one line if it leads outside `folder`: an absolute name, `..`, or a symlink
    out. A model folder from elsewhere names its own files (shards, tokenizer); reading `/etc/passwd` or
    `../../secrets` because a JSON file says so would leak data the user never pointed at."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise DataError(f"{folder}: file name {name!r} leads outside the folder; arseq reads a model folder's files only inside it")
    path = folder / name
    if path.is_symlink() or path.exists():
        target = path.resolve()
        if not target.is_relative_to(folder.resolve()):
            raise DataError(f"{path}: links to {target}, outside {folder}; arseq reads a model folder's files only inside it")
    return path


def check_run(
    model_cfg: Any,
    num_samples: int,
    batch_size: int,
    draft: str | None = None,
    draft_tokens: int = 4,
    minimum_samples: int = 1,
    max_new_tokens: int | None = None,
) -> None:
    """generate/evaluate/drift flags against the model they run: --num-samples and --max-new-tokens (every
    sample's tokens are kept), --batch-size (a KV cache of that many rows), --draft-tokens (proposed tokens
    must fit the context)."""
    ctx, layers, width = model_cfg.max_seq_len, model_cfg.n_layer, model_cfg.d_model
    check_count("--num-samples", num_samples, ctx * TOKEN_BYTES, minimum_samples)
    if isinstance(max_new_tokens, int) and max_new_tokens >= 1:  # below 1: the sampling settings say so
        check_count("--max-new-tokens", max_new_tokens, max(1, num_samples) * TOKEN_BYTES)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    rows = max(1, min(batch_size, num_samples))  # a batch never holds more rows than there are samples
    cache = rows * 2 * layers * ctx * width * FLOAT_BYTES
    if cache > memory_budget():
        raise DataError(
            f"--batch-size {batch_size}: a KV cache of {rows} rows needs {_gb(cache)}; this machine has {_gb(memory_budget())} (lower --batch-size)"
        )
    if draft:
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
            raise DataError(f"--draft-tokens must be an integer >= 1, got {draft_tokens!r}")
        if draft_tokens > ctx:
            raise DataError(f"--draft-tokens {draft_tokens}: more than the model's context of {ctx} tokens")


def check_call(loaded: Any, call: Any, verb: str) -> None:
    """check_run for a parsed generate/evaluate call (arseq.app.options.Call) on a loaded model."""
    check_run(
        loaded.model.cfg,
        call.request.num_samples,
        call.run.batch_size,
        call.run.draft,
        call.run.draft_tokens,
        minimum_samples=int(verb == "generate"),
        max_new_tokens=getattr(call.request.sampling, "max_new_tokens", None),
    )


PATTERN_SECONDS = 1.0  # per search: a useful tag pattern takes microseconds on a header
FILE_SECONDS = 120.0  # per input file while preparing data (ARSEQ_FILE_SECONDS overrides)


class _Expired(BaseException):
    """Raised by the timer; a BaseException, so that libraries' `except Exception` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float, message: str) -> Iterator[None]:
    """Run the block for at most `seconds`, else a one-line DataError(`message`). A SIGALRM timer: CPython's
    regex engine and pure-Python parsers (music21) check for signals. Off the main thread, or where there is
    no setitimer, the block runs unbounded."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise DataError(message) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def file_seconds() -> float:
    """The time budget of reading one input file: ARSEQ_FILE_SECONDS, else FILE_SECONDS."""
    try:
        return max(0.001, float(os.environ.get("ARSEQ_FILE_SECONDS") or FILE_SECONDS))
    except ValueError:
        raise DataError(f"ARSEQ_FILE_SECONDS must be a number of seconds, got {os.environ['ARSEQ_FILE_SECONDS']!r}") from None


def bounded_search(pattern: re.Pattern[str], text: str, what: str, seconds: float = PATTERN_SECONDS) -> re.Match[str] | None:
    """`pattern.search(text)` stopped after `seconds` (one line naming `what`): patterns can come from files
    (a checkpoint's modality options) and backtrack for minutes. Off the main thread (no timer) the text is
    cut to MAX_PATTERN_TEXT characters."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return pattern.search(text[:MAX_PATTERN_TEXT])
    with time_limit(
        seconds,
        f"{what} {pattern.pattern!r}: still searching {len(text)} characters after {seconds:g} s (catastrophic backtracking?); use a simpler pattern",
    ):
        return pattern.search(text)


MAX_PATTERN_TEXT = 1000


def is_file(name: str) -> bool:
    """Path(name).is_file() for a string that may be a motif or text rather than a path: a name too long for
    the filesystem (ENAMETOOLONG, a 256-letter motif) or otherwise unusable is simply not a file."""
    try:
        return Path(name).is_file()
    except (OSError, ValueError):
        return False
