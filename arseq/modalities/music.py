"""Music: scores (MIDI, MusicXML, Humdrum, ABC) as REMI-style tokens; Bach chorales out of the box.

Reading parses files in worker processes (music21 needs ~0.1-0.5 s a score); each worker parses and
encodes and hands back only token ids, so scores are never pickled. Generated pieces are written as
.mid (one distinct program per part, so voices survive a MIDI round trip), .musicxml and a piano-roll
.png. A grammar constraint keeps sampled event order well-formed, so every sample parses back.

music21 is imported only inside functions: a cached `arseq prepare` or `train` never pays for it.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from arseq.errors import one_line
from arseq.modalities import (
    Constraint,
    DataError,
    EvalInputs,
    Example,
    Modality,
    OutputFiles,
    Sample,
    Skipped,
)
from arseq.tokenizers.score import PITCH, VOICE_NAMES, Events, Grammar, ScoreTokenizer

SUFFIXES = (".mid", ".midi", ".musicxml", ".mxl", ".xml", ".krn", ".abc")
# Nucleus sampling slightly cooled: at T = 1 the 0.8 M-parameter CPU model's samples were 90 % in key (held-out
# chorales: 95 %), with these 92 %, their pitch-class entropy then matching the data's (configs/music/bach_chorales.yaml).
SAMPLING_DEFAULTS = {"temperature": 0.9, "top_p": 0.95}
# Usual ranges (MIDI) of the four chorale voices, soprano to bass, for the out-of-range metric.
VOICE_RANGES = ((60, 81), (53, 74), (48, 69), (40, 62))
PART_COLOURS = ((220, 50, 47), (38, 139, 210), (133, 153, 0), (108, 113, 196), (203, 75, 22),
                (42, 161, 152), (211, 54, 130), (181, 137, 0))


class MusicModality(Modality):
    name = "music"
    tokenizer_kinds = {ScoreTokenizer.kind: ScoreTokenizer}
    suffixes = SUFFIXES

    def __init__(self, transpose: list[int] = [-5, 6], ppq: int = 24, max_parts: int = 16,  # noqa: B006
                 velocity: bool = False, tempo: bool = True, workers: int = 2):
        if len(transpose) != 2 or transpose[0] > transpose[1]:
            raise DataError(f"modality.transpose must be [low, high] semitones, got {transpose}")
        self.transpose = (int(transpose[0]), int(transpose[1]))
        self.options = dict(ppq=ppq, max_parts=max_parts, velocity=velocity, tempo=tempo)
        self.workers = max(1, workers)
        self.tokenizer = ScoreTokenizer(**self.options)  # built from options alone, so `augment` has it

    # ---- data ---------------------------------------------------------------------------------
    def demo_config(self, tmp_dir: Path) -> dict[str, Any]:
        """Five chorales copied from music21's corpus, transposition kept small."""
        import shutil

        for name, path in bach_chorales()[:5]:
            shutil.copy(path, tmp_dir / Path(path).name)
        return {"data": {"paths": str(tmp_dir)}, "modality": {"transpose": [-1, 1], "workers": 1}}

    def build_tokenizer(self, files: list[Path], source: str | None) -> ScoreTokenizer:
        return self.tokenizer

    def read(self, files: list[Path], source: str | None, tokenizer: ScoreTokenizer,
             check_roundtrip: bool = False) -> Iterator[Example | Skipped]:
        if source not in (None, "bach_chorales"):
            raise DataError(f"data.source {source!r}: the music modality knows 'bach_chorales' (or give data.paths)")
        items = bach_chorales() if source == "bach_chorales" else [(str(f), str(f)) for f in files]
        jobs = [(name, path, tokenizer.to_dict(), check_roundtrip) for name, path in items]
        for name, tokens, exact, info, reason in _run_parallel(jobs, self.workers):
            if reason is not None:
                yield Skipped(name, reason)
            else:
                yield Example(tokens, name, exact, info)

    def augment(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transpose the window by a random number of semitones in range, keeping every pitch in MIDI range."""
        span = self.tokenizer.pitch_span(tokens)
        if span is None:
            return tokens
        lo, hi = max(self.transpose[0], -span[0]), min(self.transpose[1], 127 - span[1])
        if lo > hi:
            return tokens
        return self.tokenizer.transpose(tokens, int(rng.integers(lo, hi + 1))).astype(tokens.dtype, copy=False)

    # ---- generation ---------------------------------------------------------------------------
    def add_generate_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (f"music samples with --temperature {SAMPLING_DEFAULTS['temperature']} --top-p "
                              f"{SAMPLING_DEFAULTS['top_p']} unless those flags are typed: cutting the unlikely "
                              "tail keeps small models in key")
        parser.add_argument("--prompt-bars", type=int, default=None,
                            help="with --prompt FILE (MIDI/MusicXML/...): continue after its first N bars")
        parser.add_argument("--bars", type=int, default=None, help="stop each sample after N new bars")

    def configure_sampling(self, args: argparse.Namespace, sampling: Any) -> Any:
        typed = getattr(args, "explicit", frozenset())
        changes: dict[str, Any] = {k: v for k, v in SAMPLING_DEFAULTS.items() if k not in typed}
        bars = getattr(args, "bars", None)
        if bars is not None:
            if bars < 1:
                raise DataError(f"--bars must be >= 1, got {bars}")
            changes["max_new_tokens"] = max(sampling.max_new_tokens, 64 * bars)
        return replace(sampling, **changes)

    def prompts(self, tokenizer: ScoreTokenizer, args: argparse.Namespace, num_samples: int) -> list[list[int]]:
        prompt = getattr(args, "prompt", None)
        if not prompt:
            return [[tokenizer.bos_id] for _ in range(num_samples)]
        ids = prompt_tokens(tokenizer, Path(prompt), getattr(args, "prompt_bars", None))
        return [list(ids) for _ in range(num_samples)]

    def fit_prompt(self, tokenizer: ScoreTokenizer, prompt: list[int], limit: int) -> tuple[list[int], str]:
        """The header and the first whole bars that fit, then a bar line (as --prompt-bars does)."""
        bar_at = [i for i, t in enumerate(prompt) if t == tokenizer.bar_id]
        bars = max((k for k in range(1, len(bar_at)) if bar_at[k] + 1 <= limit), default=None)
        if bars is None:
            raise DataError(f"the prompt's first bar does not fit in {limit} tokens; choose a shorter prompt")
        return prompt[: bar_at[bars]] + [tokenizer.bar_id], f"its first {bars} of {len(bar_at)} bars"

    def constraint(self, tokenizer: ScoreTokenizer, args: argparse.Namespace) -> Constraint:
        return GrammarConstraint(tokenizer, getattr(args, "bars", None))

    def write(self, tokenizer: ScoreTokenizer, samples: list[Sample], out: Path | None,
              args: argparse.Namespace) -> list[Path]:
        if out is None:
            for i, s in enumerate(samples):
                ev = tokenizer.decode_events(s.prompt + s.tokens)
                print(f"# sample {i}: {len(ev.bars)} bars, {len(ev.notes)} notes, {ev.num_parts} parts, "
                      f"{ev.repairs} repairs, nll {s.nll:.3f}")
                print(" ".join(tokenizer.token_name(t) for t in s.prompt + s.tokens))
            return []
        out = Path(out)
        files = OutputFiles(overwrite=getattr(args, "overwrite", False), protect=[getattr(args, "prompt", None)])
        for i, s in enumerate(samples):
            ev = tokenizer.decode_events(s.prompt + s.tokens)
            score = tokenizer.to_score(ev)
            stem = out / f"sample_{i:03d}"
            files.add(stem.with_suffix(".mid"), partial(_write_midi, score))
            files.add(stem.with_suffix(".musicxml"), partial(tokenizer.write_musicxml, score))
            files.add(stem.with_suffix(".png"), partial(_write_piano_roll, ev, tokenizer.ppq))
        return files.commit()

    # ---- reporting ----------------------------------------------------------------------------
    def summarize(self, tokenizer: ScoreTokenizer, examples: list[Example]) -> dict[str, Any]:
        notes = sum(e.info.get("notes", 0) for e in examples)
        tokens = sum(len(e.tokens) for e in examples)
        inexact = [f"{e.name}: {int(e.info.get('quantized', 0))} notes moved onto the grid, "
                   f"{int(e.info.get('dropped', 0))} grace notes dropped" for e in examples if e.exact is False]
        return {
            "num_notes": int(notes),
            "tokens_per_note": round(tokens / max(1, notes), 3),
            "notes_per_piece": round(notes / max(1, len(examples)), 1),
            "quantized_notes": int(sum(e.info.get("quantized", 0) for e in examples)),
            "dropped_notes": int(sum(e.info.get("dropped", 0) for e in examples)),
            "roundtrip_inexact": inexact,
        }

    def metrics(self, tokenizer: ScoreTokenizer, sequences: list[list[int]]) -> dict[str, float]:
        return score_metrics([tokenizer.decode_events(s) for s in sequences])

    def evaluate(self, tokenizer: ScoreTokenizer, report: EvalInputs) -> dict[str, Any]:
        is_pitch = tokenizer.types == PITCH
        notes = sum(int(is_pitch[np.asarray(v[1:], dtype=np.int64)].sum()) for v in report.val)
        counts = np.ones(tokenizer.vocab_size)  # add-one unigram baseline fitted on the training items
        for t in report.train:
            counts += np.bincount(np.asarray(t[1:], dtype=np.int64), minlength=tokenizer.vocab_size)
        logp = np.log(counts / counts.sum())
        unigram = -sum(float(logp[np.asarray(v[1:], dtype=np.int64)].sum()) for v in report.val)
        return {
            "nll_per_note": report.total_nll / max(1, notes),
            "bits_per_note": report.total_nll / max(1, notes) / math.log(2),
            "tokens_per_note": report.num_predicted / max(1, notes),
            "baselines": {"unigram_nats_per_token": unigram / max(1, report.num_predicted)},
        }


    def plausible_mistake(self, tokenizer: ScoreTokenizer, tokens: np.ndarray, position: int, rng: np.random.Generator) -> int | None:
        """A note a semitone off (up or down at random); None for tokens that are not pitches."""
        t = int(tokens[position])
        if not 0 <= t < tokenizer.vocab_size or tokenizer.types[t] != PITCH:
            return None
        value, step = int(tokenizer.values[t]), int(rng.choice((-1, 1)))
        return tokenizer.start[PITCH] + (value + step if 0 <= value + step < 128 else value - step)

    def error_predicate(self, tokenizer: ScoreTokenizer, reference: list[np.ndarray]) -> Callable[[Sequence[int]], np.ndarray]:
        """Besides grammar violations (the constraint): a pitch outside the key of the piece (as `in_key_rate` judges it)."""
        def out_of_key(tokens: Sequence[int]) -> np.ndarray:
            ids = np.asarray(tokens, dtype=np.int64)
            pitch = (ids >= 0) & (ids < tokenizer.vocab_size)
            pitch[pitch] = tokenizer.types[ids[pitch]] == PITCH
            ev = tokenizer.decode_events(list(tokens))
            if not pitch.any() or not ev.notes:
                return np.zeros(len(ids), dtype=bool)
            scale = np.array(sorted(_key_scale(ev)))
            return pitch & ~np.isin(tokenizer.values[np.clip(ids, 0, tokenizer.vocab_size - 1)] % 12, scale)

        return out_of_key

# ---- reading ------------------------------------------------------------------------------------
def bach_chorales() -> list[tuple[str, str]]:
    """(name, path) of the 350 distinct chorales of music21's `corpus.chorales.Iterator`.

    A name can match several corpus files (bwv281 has a .krn and an .mxl; bwv245.3 also matches
    bwv245.37); take the file whose stem is the name exactly, preferring MusicXML.
    """
    from music21 import corpus

    order = {".mxl": 0, ".xml": 1, ".musicxml": 1, ".krn": 2}
    out = []
    for name in dict.fromkeys(corpus.chorales.Iterator(returnType="filename")):
        found = corpus.getWork(name)
        found = found if isinstance(found, list) else [found]
        stem = name.rsplit("/", 1)[-1]
        exact = [p for p in found if p.name[: -len(p.suffix)] == stem and p.suffix in order] or found
        out.append((name, str(min(exact, key=lambda p: order.get(p.suffix, 9)))))
    return out


def _run_parallel(jobs: list[tuple], workers: int) -> Iterator[tuple]:
    """Parse and encode files in worker processes, in order (the core's progress bar counts them)."""
    if workers <= 1 or len(jobs) < 4:
        yield from (_load(*job) for job in jobs)
        return
    # fork where there is one: workers inherit the imported music21 and never re-run the caller's
    # main module; they only run music21 (pure Python), never torch
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    import music21.converter  # noqa: F401  (imported once here, inherited by forked workers)

    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            yield from pool.map(_load_job, jobs, chunksize=max(1, min(8, len(jobs) // (8 * workers))))
    except BrokenProcessPool as e:
        raise DataError(f"a music parsing worker died ({e}); try modality.workers: 1 to find the file") from None


def _load_job(job: tuple) -> tuple:
    return _load(*job)


@lru_cache(maxsize=4)
def _tokenizer(state: tuple) -> ScoreTokenizer:
    return ScoreTokenizer.from_dict(dict(state))


def _load(name: str, path: str, state: dict, check_roundtrip: bool) -> tuple:
    """(name, tokens, exact, info, skip reason) for one file: parsed, encoded, optionally round-tripped."""
    tok = _tokenizer(tuple(sorted(state.items())))
    try:
        events = read_events(tok, Path(path))
    except DataError as e:
        return name, None, None, {}, str(e).removeprefix(f"{path}: ")
    ids = np.asarray(tok.encode_events(events), dtype=np.int32)
    exact = None
    if check_roundtrip:
        key = lambda n: (n.part, n.onset, n.pitch, n.dur)  # noqa: E731
        try:
            back = tok.extract(tok.to_score(tok.decode_events(ids)))
            same = sorted(map(key, back.notes)) == sorted(map(key, events.notes))
        except Exception:  # a failure to rebuild is a failed round trip, not a crash
            same = False
        exact = same and events.quantized == 0 and events.dropped == 0
    info = {"notes": float(len(events.notes)), "bars": float(len(events.bars)), "parts": float(events.num_parts),
            "quantized": float(events.quantized), "dropped": float(events.dropped)}
    return name, ids, exact, info, None


def read_events(tok: ScoreTokenizer, path: Path) -> Events:
    """Parse one file into events; every problem becomes a one-line DataError naming the file."""
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; music reads {' '.join(SUFFIXES)}")
    if path.suffix.lower() in (".mid", ".midi"):
        _check_midi(path)
    from music21 import converter

    try:
        score = converter.parse(str(path))
    except Exception as e:  # music21 raises many kinds on bad files; one line is what the user needs
        raise DataError(f"{path}: cannot parse ({one_line(e, with_type=True, limit=200)})") from None
    try:
        return tok.extract(score)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read the score ({one_line(e, with_type=True, limit=200)})") from None


def _check_midi(path: Path) -> None:
    """Catch truncated MIDI files, which music21 reads silently as their first few notes."""
    data = path.read_bytes()
    if data[:4] != b"MThd" or len(data) < 14:
        raise DataError(f"{path}: not a MIDI file (no MThd header)")
    at = 8 + int.from_bytes(data[4:8], "big")
    tracks = int.from_bytes(data[10:12], "big")
    for i in range(tracks):
        if at + 8 > len(data):
            raise DataError(f"{path}: truncated MIDI (header promises {tracks} tracks, file ends in track {i + 1})")
        size = int.from_bytes(data[at + 4 : at + 8], "big")
        if at + 8 + size > len(data):
            raise DataError(f"{path}: truncated MIDI (track {i + 1} declares {size} bytes, {len(data) - at - 8} present)")
        at += 8 + size


def prompt_tokens(tok: ScoreTokenizer, path: Path, bars: int | None) -> list[int]:
    """A prompt file's tokens (BOS ... no EOS); with `bars`, its first `bars` bars and the next bar line,
    so the model continues in a new bar and the prompt's bars stay as they are."""
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    ids = tok.encode_events(read_events(tok, path))[:-1]
    if bars is not None:
        if bars < 1:
            raise DataError(f"--prompt-bars must be >= 1, got {bars}")
        bar_at = [i for i, t in enumerate(ids) if t == tok.bar_id]
        ids = ids[: bar_at[bars]] if len(bar_at) > bars else ids
        ids.append(tok.bar_id)
    return ids


# ---- generation --------------------------------------------------------------------------------
class GrammarConstraint:
    """Sampling constraint: only tokens the grammar allows; after `bars` new bars, no new notes (only the
    bar lines a still-ringing note needs before EOS).

    Keeps one incremental `Grammar` per row (the sampler grows the same row lists in place).
    """

    def __init__(self, tok: ScoreTokenizer, bars: int | None = None):
        self.tok, self.bars = tok, bars
        self.closing = np.zeros(tok.vocab_size, dtype=bool)
        self.closing[[tok.bar_id, tok.eos_id]] = True
        self.state: dict[int, tuple[list[int], Grammar, int, int]] = {}  # id -> (row, grammar, fed, bars0)

    def __call__(self, rows: list[list[int]]) -> torch.Tensor:
        masks = np.zeros((len(rows), self.tok.vocab_size), dtype=bool)
        for i, row in enumerate(rows):
            entry = self.state.get(id(row))
            if entry is None or entry[0] is not row or entry[2] > len(row):
                entry = (row, Grammar(self.tok), 0, -1)
            _, g, fed, bars0 = entry
            for t in row[fed:]:
                g.feed(int(t))
            if bars0 < 0:
                bars0 = len(g.bars)
            self.state[id(row)] = (row, g, len(row), bars0)
            masks[i] = g.allowed()
            if self.bars is None:
                continue
            new_bars = len(g.bars) - bars0
            if new_bars > self.bars and (masks[i] & self.closing).any():
                masks[i] &= self.closing  # a bar opened only to let a held note end: no new notes in it
            if new_bars >= self.bars and masks[i, self.tok.eos_id]:
                masks[i, self.tok.bar_id] = False  # enough bars: end here (unless a note still rings on)
        return torch.from_numpy(masks)


def _write_midi(score: Any, path: Path) -> None:
    score.write("midi", fp=str(path))


def _write_piano_roll(events: Events, ppq: int, path: Path) -> None:
    piano_roll(events, ppq).save(path, format="PNG")


def piano_roll(ev: Events, ppq: int, px_per_quarter: int = 24, row: int = 5) -> Any:
    """A piano-roll image: one colour per part, bar lines, C of each octave labelled on the pitch axis."""
    from PIL import Image, ImageDraw

    end = ev.bars[-1].start + ev.bars[-1].length if ev.bars else ppq * 4
    pitches = [n.pitch for n in ev.notes] or [60]
    lo, hi = max(0, min(pitches) - 3), min(127, max(pitches) + 3)
    scale = px_per_quarter / ppq
    if end * scale > 4000:
        scale = 4000 / end
    left, top = 36, 18
    width, height = left + int(end * scale) + 8, top + (hi - lo + 1) * row + 8
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    y = lambda p: top + (hi - p) * row  # noqa: E731
    for p in range(lo, hi + 1):
        if p % 12 in (1, 3, 6, 8, 10):
            d.rectangle([left, y(p), width - 8, y(p) + row - 1], fill=(243, 243, 243))
        if p % 12 == 0:
            d.line([left, y(p) + row - 1, width - 8, y(p) + row - 1], fill=(200, 200, 200))
            d.text((2, y(p) - 4), f"C{p // 12 - 1}", fill="black")
    for i, bar in enumerate(ev.bars):
        x = left + int(bar.start * scale)
        d.line([x, top, x, height - 8], fill=(150, 150, 150))
        if i % 4 == 0:
            d.text((x + 2, 2), str(i + 1), fill=(90, 90, 90))
    d.line([left + int(end * scale), top, left + int(end * scale), height - 8], fill=(150, 150, 150))
    names = list(VOICE_NAMES) if ev.num_parts == 4 else [f"Part {i + 1}" for i in range(ev.num_parts)]
    x = width - 8
    for part in sorted({n.part for n in ev.notes}, reverse=True):  # legend, right-aligned above the roll
        x -= 14 + 6 * len(names[part])
        d.rectangle([x, 5, x + 6, 11], fill=PART_COLOURS[part % len(PART_COLOURS)])
        d.text((x + 8, 2), names[part], fill="black")
    for n in ev.notes:
        x0, x1 = left + int(n.onset * scale), left + max(int(n.onset * scale) + 1, int((n.onset + n.dur) * scale) - 1)
        d.rectangle([x0, y(n.pitch), x1, y(n.pitch) + row - 1], fill=PART_COLOURS[n.part % len(PART_COLOURS)])
    return img


# ---- metrics -----------------------------------------------------------------------------------
def score_metrics(pieces: list[Events]) -> dict[str, float | None]:
    """Descriptive statistics of decoded pieces; always the same keys (None where nothing to measure)."""
    pieces = [p for p in pieces if p.notes]
    entropy, in_key, ranges = [], [], {part: [] for part in range(4)}
    notes = bars = outside = voiced = 0
    for ev in pieces:
        pcs = np.bincount([n.pitch % 12 for n in ev.notes], minlength=12)
        prob = pcs[pcs > 0] / pcs.sum()
        entropy.append(float(-(prob * np.log2(prob)).sum()))
        scale = _key_scale(ev)
        in_key.append(float(np.mean([n.pitch % 12 in scale for n in ev.notes])))
        notes += len(ev.notes)
        bars += max(1, len(ev.bars))
        for part in range(min(4, ev.num_parts)):
            ps = [n.pitch for n in ev.notes if n.part == part]
            if ps:
                ranges[part].append(max(ps) - min(ps))
        if ev.num_parts == 4:
            for n in ev.notes:
                lo, hi = VOICE_RANGES[n.part]
                outside += not lo <= n.pitch <= hi
                voiced += 1
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    out = {
        "pieces_with_notes": len(pieces),
        "pitch_class_entropy": mean(entropy),
        "in_key_rate": mean(in_key),
        "notes_per_bar": notes / bars if bars else None,
        "notes_per_piece": notes / len(pieces) if pieces else None,
        "repairs_per_piece": mean([p.repairs for p in pieces]),
    }
    out.update({f"pitch_range_part{p}": mean(r) for p, r in ranges.items()})
    out["outside_voice_range"] = outside / voiced if voiced else None
    return out


def _key_scale(ev: Events) -> set[int]:
    """Pitch classes of the piece's key as music21's Krumhansl-Schmuckler analysis finds it.

    Minor keys count the raised sixth and seventh as in key (melodic/harmonic minor), as Bach uses them.
    """
    from music21 import analysis, note, stream

    weights = np.zeros(12)
    for n in ev.notes:
        weights[n.pitch % 12] += n.dur
    weights = np.maximum(1, np.round(64 * weights / weights.sum())) * (weights > 0)  # quarters, total ~64
    s = stream.Stream()
    for pc in np.flatnonzero(weights):
        s.append(note.Note(60 + int(pc), quarterLength=float(weights[pc])))
    k = analysis.discrete.KrumhanslSchmuckler().getSolution(s)
    tonic = k.tonic.pitchClass
    steps = (0, 2, 4, 5, 7, 9, 11) if k.mode == "major" else (0, 2, 3, 5, 7, 8, 9, 10, 11)
    return {(tonic + s) % 12 for s in steps}
