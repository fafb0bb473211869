"""Reading scores for the music modality: files in parallel worker processes, the round-trip check and
its reasons, MIDI sanity checks, and prompt files. (music21 corpus sources: `corpus`.)"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from arseq.errors import DataError, one_line
from arseq.limits import time_limit
from arseq.modalities.base import Example
from arseq.modalities.music.conditions import piece_conditions
from arseq.parallel import Failed, file_budget, ordered_map
from arseq.tokenizers.score import Events, ScoreTokenizer
from arseq.tokenizers.score.events import LOSS_REASONS, note_key, note_order
from arseq.tokenizers.score.midi_file import track_chunks
from arseq.tokenizers.score.midi_reading import read_midi
from arseq.tokenizers.score.music21_midi import read_midi_music21

SUFFIXES = (".mid", ".midi", ".musicxml", ".mxl", ".xml", ".krn", ".abc")


# ---- reading ------------------------------------------------------------------------------------
MIDI_READERS = ("symusic", "music21")


def read_in_parallel(jobs: list[tuple], workers: int | None = None, loader: Callable[..., tuple] | None = None) -> Iterator[tuple]:
    """`loader(*job)` (default `load_piece`) for each job in worker processes (`arseq.parallel`), in
    order: a file that crashes or hangs its worker is skipped with the reason."""
    if any(job[1].lower().endswith(SUFFIXES[2:]) for job in jobs) or any(job[4:5] == ("music21",) for job in jobs):
        import music21.converter  # noqa: F401  (imported once here, inherited by forked workers)
    if loader is not None and any(job[1].lower().endswith(SUFFIXES[:2]) for job in jobs):
        import symusic  # noqa: F401  (the same, for the performance reader)
    workers = 1 if len(jobs) < 4 else workers  # forking costs more than a few files
    # the parent's budget: the worker's own SIGALRM budget first, then a kill (a hang in C code)
    run = partial(_run_job, loader or load_piece)
    for job, result in zip(jobs, ordered_map(run, jobs, workers, seconds=file_budget() + 5)):
        yield (job[0], None, None, {}, {}, result.reason) if isinstance(result, Failed) else result


def _run_job(loader: Callable[..., tuple], job: tuple) -> tuple:
    return loader(*job)


@lru_cache(maxsize=4)
def _tokenizer(state: tuple) -> ScoreTokenizer:
    return ScoreTokenizer.from_dict(dict(state))


def _load(name: str, path: str, state: dict, check_roundtrip: bool, reader: str = "symusic") -> tuple:
    """(name, tokens, exact, info, skip reason) of one file (`load_piece` without the conditions)."""
    name, ids, exact, info, _, reason = load_piece(name, path, state, check_roundtrip, reader)
    return name, ids, exact, info, reason


def load_piece(name: str, path: str, state: dict, check_roundtrip: bool, reader: str = "symusic", voices: bool = False) -> tuple:
    """(name, tokens, exact, info, conditions, skip reason) for one file: parsed (`voices`: a chorale's four
    voices alone, `four_voices`), encoded, optionally round-tripped, its conditions (key, meter, composer)
    found from its events, all in the worker."""
    tok = _tokenizer(tuple(sorted(state.items())))
    seconds = file_budget()
    try:
        with time_limit(
            seconds, f"{path}: still reading after {seconds:g} s (the per-file budget, data.file_seconds or ARSEQ_FILE_SECONDS); skipped"
        ):
            events = read_events(tok, Path(path), reader, voices)
    except DataError as e:
        return name, None, None, {}, {}, str(e).removeprefix(f"{path}: ")
    encoded = tok.encode_events(events)
    ids = np.asarray(encoded, dtype=np.int32)
    lost = roundtrip_losses(tok, events, encoded) if check_roundtrip else {}
    info = {
        "notes": float(len(events.notes)),
        "bars": float(len(events.bars)),
        "parts": float(events.num_parts),
        "quantized": float(events.quantized),
        "dropped": float(events.dropped),
        "off_grid": float(events.lost.get("off_grid", 0)),
        "grace": float(sum(n.grace > 0 for n in events.notes)),
        **{f"lost.{k}": float(v) for k, v in lost.items()},
    }
    return name, ids, (not lost) if check_roundtrip else None, info, piece_conditions(events, path), None


def roundtrip_losses(tok: ScoreTokenizer, events: Events, ids: Sequence[int]) -> dict[str, int]:
    """Why decode(encode(x)) is not x: notes per reason (keys of LOSS_REASONS); empty when it is exact.

    Reading's own losses (off-grid notes, dropped notes, ...) and what the round trip finds: grammar
    repairs of the encoder's ids, notes changed by writing the decoded score and reading it back (the
    multiset difference of the two note lists, in token order), or a score that cannot be rebuilt.
    """
    lost = dict(events.lost)
    try:
        decoded = tok.decode_events(ids)
        if decoded.repairs:
            lost["grammar_repairs"] = decoded.repairs
        back = tok.extract(tok.to_score(decoded))
    except Exception:  # a failure to rebuild is a failed round trip, not a crash
        return {**lost, "rebuild_failed": 1}
    before = [note_key(n) for n in sorted(events.notes, key=note_order)]
    after = [note_key(n) for n in sorted(back.notes, key=note_order)]
    if before != after:
        lost["changed_in_writing"] = max(1, sum((Counter(before) - Counter(after)).values()))
    return lost


def roundtrip_report(examples: Sequence[Example], first: int = 5) -> dict[str, Any]:
    """`prepare --check-roundtrip`'s account of inexact items: each one with its reasons, and per reason the
    files, notes and first few names. An inexact item always has a reason ("unexplained" would show a bug)."""
    inexact = [e for e in examples if e.exact is False]
    per_file: list[str] = []
    reasons: dict[str, dict[str, Any]] = {}
    for e in inexact:
        lost = {k.removeprefix("lost."): int(v) for k, v in e.info.items() if k.startswith("lost.")} or {"unexplained": 0}
        per_file.append(f"{e.name}: " + ", ".join(f"{LOSS_REASONS.get(k, k)} ({v} notes)" for k, v in lost.items()))
        for k, v in lost.items():
            r = reasons.setdefault(k, {"reason": LOSS_REASONS.get(k, k), "files": 0, "notes": 0, "first": []})
            r["files"] += 1
            r["notes"] += v
            if len(r["first"]) < first:
                r["first"].append(e.name)
    return {"roundtrip_inexact": per_file[:50], "roundtrip_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["files"]))}


def read_events(tok: ScoreTokenizer, path: Path, midi_reader: str = "symusic", voices: bool = False) -> Events:
    """Parse one file into events; every problem becomes a one-line DataError naming the file. MIDI files
    go through `midi_reading` unless `midi_reader` is "music21" (the same events, ~100x faster; the name
    "symusic" is what configs have always said, from when symusic parsed the files). `voices`: a score whose
    parts name a soprano, an alto, a tenor and a bass keeps those four alone (`four_voices`).

    music21 reads MIDI on the tokenizer's own grid (`quarterLengthDivisors=(ppq,)`): its default, 16ths
    and eighth triplets, would move 32nd notes and quintuplets and gather near onsets into chords, throwing
    away what the tokens can hold (and what the fast path keeps); and without its notation step, which moves
    notes (`music21_midi`)."""
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; music reads {' '.join(SUFFIXES)}")
    if path.suffix.lower() in (".mid", ".midi"):
        _check_midi(path, scan_events=midi_reader != "symusic")
        return _read_midi(tok, path, midi_reader)
    from music21 import converter

    try:
        score = converter.parse(str(path))
    except Exception as e:  # music21 raises many kinds on bad files; one line is what the user needs
        raise DataError(f"{path}: cannot parse ({one_line(e, with_type=True, limit=200)})") from None
    try:
        return tok.extract(four_voices(score) if voices else score)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read the score ({one_line(e, with_type=True, limit=200)})") from None


VOICES = ("soprano", "alto", "tenor", "bass")


def four_voices(score: Any) -> Any:
    """The score with only its first part named for each of VOICES (a name that starts with it: "Soprano 1",
    "Bass Continuo"), in that order, when it has more parts and names all four; else the score as it is.
    Why: 18 of music21's 350 chorales add instruments (trumpets, horns, timpani, strings), a continuo or a
    second soprano, most of them before the voices, so part 0 was a trumpet where it is the soprano in the
    other 332, and a model trained on them wrote a fifth to a twelfth part now and then."""
    parts = list(score.parts)
    named = [next((p for p in parts if (p.partName or "").strip().lower().startswith(v)), None) for v in VOICES]
    if len(parts) <= len(VOICES) or any(p is None for p in named):
        return score
    for p in parts:
        if all(p is not v for v in named):
            score.remove(p)
    return score


def _read_midi(tok: ScoreTokenizer, path: Path, midi_reader: str) -> Events:
    """A MIDI file by either reader. The fast one is bounded like music21's (the same limits, checked on what
    the scan read: it holds a 2^28-tick gap as one number, the bars made from it would not be)."""
    try:
        if midi_reader == "symusic":
            return read_midi(tok, path, MAX_MIDI_QUARTERS, MAX_MIDI_EVENTS)
        return read_midi_music21(tok, path)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # a damaged file neither reader's own checks foresaw: one line, not a traceback
        raise DataError(f"{path}: cannot parse ({one_line(e, with_type=True, limit=200)})") from None


def _check_midi(path: Path, scan_events: bool = True) -> None:
    """Catch truncated MIDI files, which music21 reads silently as their first few notes (symusic too, when
    the header promises more tracks than there are: the performance reader), and, with `scan_events`, files whose length in time
    or events would take all memory or hours in music21 (a 45-byte file with one gap of 2^28 ticks became
    5.4 GB): bounded by MAX_MIDI_QUARTERS and MAX_MIDI_EVENTS before parsing. Without `scan_events` only
    the chunk headers are read (~10 us instead of ~5 ms a file; the fast path checks sizes as it reads)."""
    data = path.read_bytes()
    if data[:4] != b"MThd" or len(data) < 14:
        raise DataError(f"{path}: not a MIDI file (no MThd header)")
    division = int.from_bytes(data[12:14], "big")
    per_quarter = division if division and not division & 0x8000 else 480  # SMPTE timing: ticks are frames
    events = 0
    try:
        chunks = list(track_chunks(data))
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    for number, _, start, size in chunks if scan_events else []:
        ticks, count = _track_extent(data, start, start + size)
        events += count
        if ticks / per_quarter > MAX_MIDI_QUARTERS:
            raise DataError(
                f"{path}: track {number} lasts {ticks:,} ticks ({ticks / per_quarter:,.0f} quarter notes), more than {MAX_MIDI_QUARTERS:,}"
            )
        if events > MAX_MIDI_EVENTS:
            raise DataError(f"{path}: more than {MAX_MIDI_EVENTS:,} MIDI events")


MAX_MIDI_QUARTERS = 50_000  # ~7 hours at 120 bpm; the longest Bach chorale is ~200
MAX_MIDI_EVENTS = 2_000_000


def _track_extent(data: bytes, at: int, end: int) -> tuple[int, int]:
    """(total delta ticks, events) of one MTrk chunk's events. Lenient: a malformed event ends the scan
    (music21 says what is wrong with the file); only the sizes matter here."""
    ticks = events = 0
    running = 0
    while at < end:
        delta, at = _varlen(data, at, end)
        if at >= end:
            break
        ticks += delta
        events += 1
        status = data[at]
        if status == 0xFF:  # meta event: type, length, data
            length, at = _varlen(data, at + 2, end)
            at += length
        elif status in (0xF0, 0xF7):  # sysex: length, data
            length, at = _varlen(data, at + 1, end)
            at += length
        else:
            if status & 0x80:
                running, at = status, at + 1
            elif not running:
                break
            at += 1 if running & 0xF0 in (0xC0, 0xD0) else 2
    return ticks, events


def _varlen(data: bytes, at: int, end: int) -> tuple[int, int]:
    """A MIDI variable-length quantity (at most 4 bytes) at `at`, and the position after it."""
    value = 0
    for _ in range(4):
        if at >= end:
            return value, end
        byte = data[at]
        at += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return value, at


def prompt_tokens(tok: ScoreTokenizer, path: Path, bars: int | None, midi_reader: str = "symusic") -> list[int]:
    """A prompt file's tokens (BOS ... no EOS); with `bars`, its first `bars` bars and the next bar line,
    so the model continues in a new bar and the prompt's bars stay as they are."""
    ids = tok.encode_events(read_events(tok, path, midi_reader))[:-1]
    if bars is not None:
        if bars < 1:
            raise DataError(f"--prompt-bars must be >= 1, got {bars}")
        bar_at = [i for i, t in enumerate(ids) if t == tok.bar_id]
        ids = ids[: bar_at[bars]] if len(bar_at) > bars else ids
        ids.append(tok.bar_id)
    return ids
