"""The music modality with `tokenizer: performance`: MIDI as played (`arseq.tokenizers.performance`).

Reading (symusic, seconds after the file's tempo map), the sampling constraint that keeps samples
well-formed (every note-on ends), writing samples as MIDI and a piano roll, and the figures `prepare`
and `evaluate` report: the round trip's onset and velocity errors, inter-onset intervals and velocity
spread (what separates a performance from its quantized score).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from arseq.errors import DataError, one_line
from arseq.modalities.base import OutputFiles, Plan, Request, RowState
from arseq.modalities.music.key import find_key
from arseq.modalities.music.reading import _check_midi
from arseq.modalities.music.render import piano_roll
from arseq.tokenizers.performance import PerformanceGrammar, PerformanceTokenizer, PlayedNote
from arseq.tokenizers.score import Bar, Events, Note

MAX_SECONDS = 6 * 3600  # the score path's bound is 50,000 quarter notes; a performance's is its length


def read_performance(path: Path) -> list[PlayedNote]:
    """Every pitched note of a MIDI file, in seconds; one-line DataError naming the file otherwise."""
    import symusic

    try:
        # Any: symusic's stubs declare Score generic over the time unit and leave out its attributes
        ticks: Any = symusic.Score(str(path), ttype="tick")
        score = ticks.to("second")
    except Exception as e:  # symusic raises RuntimeError and others on damaged files
        raise DataError(f"{path}: cannot parse ({one_line(e, with_type=True, limit=200)})") from None
    if score.end() > MAX_SECONDS:
        raise DataError(f"{path}: lasts {score.end() / 3600:.1f} hours, more than {MAX_SECONDS // 3600}")
    notes = []
    for track in score.tracks:
        if track.is_drum:
            continue
        a = track.notes.numpy()
        notes += [
            PlayedNote(float(s), float(s + d), int(p), int(v)) for s, d, p, v in zip(a["time"], a["duration"], a["pitch"], a["velocity"]) if v > 0
        ]
    if not notes:
        raise DataError(f"{path}: no pitched notes")
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def load_performance(name: str, path: str, state: dict, check_roundtrip: bool) -> tuple:
    """(name, tokens, exact, info, conditions, skip reason) of one file, as `reading.load_piece`."""
    tok = PerformanceTokenizer.from_dict(state)
    try:
        if not path.lower().endswith((".mid", ".midi")):
            raise DataError(f"{path}: the performance tokenizer reads MIDI files only")
        _check_midi(Path(path), scan_events=False)
        notes = read_performance(Path(path))
    except DataError as e:
        return name, None, None, {}, {}, str(e).removeprefix(f"{path}: ")
    encoded = tok.encode(notes)
    ids = np.asarray(encoded, dtype=np.int32)
    info: dict[str, float] = {"notes": float(len(notes)), "seconds": float(max(n.end for n in notes))}
    exact = None
    if check_roundtrip:
        err = roundtrip_errors(tok, notes, encoded)
        info.update({f"roundtrip.{k}": v for k, v in err.items()})
        exact = err["onset_ms_max"] <= tok.step_ms / 2 + 1e-6 and err["notes_lost"] == 0  # (float rounding at half a step)
    return name, ids, exact, info, {"key": find_key(histogram(notes))[2]}, None


def histogram(notes: Sequence[PlayedNote]) -> np.ndarray:
    """Duration-weighted pitch classes (seconds), for the key."""
    h = np.zeros(12)
    for n in notes:
        h[n.pitch % 12] += n.end - n.start
    return h


def roundtrip_errors(tok: PerformanceTokenizer, notes: Sequence[PlayedNote], ids: Sequence[int]) -> dict[str, float]:
    """Onset error (ms, largest and mean) and velocity error of decode(encode(notes)), note by note."""
    back = tok.decode(ids)
    # per pitch and time step, rounding keeps the order of onsets and binning the order of velocities
    key = lambda n: (n.pitch, round(n.start * 1000 / tok.step_ms), n.velocity)  # noqa: E731
    before, after = sorted(notes, key=key), sorted(back, key=key)
    pairs = list(zip(before, after))
    onset = np.array([abs(a.start - b.start) * 1000 for a, b in pairs]) if pairs else np.zeros(1)
    vel = np.array([abs(a.velocity - b.velocity) for a, b in pairs]) if pairs else np.zeros(1)
    return {
        "onset_ms_max": float(onset.max()),
        "onset_ms_mean": float(onset.mean()),
        "velocity_max": float(vel.max()),
        "notes_lost": float(abs(len(notes) - len(back))),
    }


def summarize(examples: Sequence[Any]) -> dict[str, Any]:
    notes = sum(e.info.get("notes", 0) for e in examples)
    out: dict[str, Any] = {
        "num_notes": int(notes),
        "tokens_per_note": round(sum(len(e.tokens) for e in examples) / max(1, notes), 3),
        "seconds_per_piece": round(float(np.mean([e.info.get("seconds", 0) for e in examples])), 1),
    }
    checked = [e for e in examples if "roundtrip.onset_ms_max" in e.info]
    if checked:
        out["roundtrip_onset_ms_max"] = max(e.info["roundtrip.onset_ms_max"] for e in checked)
        out["roundtrip_onset_ms_mean"] = round(float(np.mean([e.info["roundtrip.onset_ms_mean"] for e in checked])), 3)
        out["roundtrip_velocity_max"] = max(e.info["roundtrip.velocity_max"] for e in checked)
    return out


def timing_metrics(notes_per_piece: Sequence[Sequence[PlayedNote]]) -> dict[str, float]:
    """What a performance has and a quantized score lacks: the spread of inter-onset intervals (ms) and of
    velocities, and the pace (notes per second)."""
    iois, vels = [], []
    for notes in notes_per_piece:
        onsets = np.unique(np.round([n.start for n in notes], 3))
        iois += list(np.diff(onsets) * 1000)
        vels += [n.velocity for n in notes]
    if not iois:
        return {}
    return {
        "ioi_ms_median": float(np.median(iois)),
        "ioi_ms_iqr": float(np.subtract(*np.percentile(iois, [75, 25]))),
        "velocity_std": float(np.std(vels)),
        "notes_per_second": float(len(vels) / max(1e-9, sum(iois) / 1000)),
    }


def ioi_histogram(notes_per_piece: Sequence[Sequence[PlayedNote]], edges: np.ndarray) -> np.ndarray:
    """Normalised histogram of inter-onset intervals (ms) over `edges`: for comparing sample sets."""
    iois = []
    for notes in notes_per_piece:
        onsets = np.unique(np.round([n.start for n in notes], 3))
        iois += list(np.diff(onsets) * 1000)
    h, _ = np.histogram(np.clip(iois, edges[0], edges[-1] - 1e-9), bins=edges)
    return h / max(1, h.sum())


class PerformanceConstraint:
    """Sampling constraint: only tokens `PerformanceGrammar` allows (Off only for sounding pitches, On only
    for silent ones, EOS only when every note has ended), so every sample decodes without repairs."""

    def __init__(self, tok: PerformanceTokenizer):
        self.tok = tok
        self.state: RowState[tuple[PerformanceGrammar, int]] = RowState()  # per row: (grammar, tokens fed)

    def __call__(self, rows: list[list[int]]) -> torch.Tensor:
        masks = np.zeros((len(rows), self.tok.vocab_size), dtype=bool)
        for i, row in enumerate(rows):
            kept = self.state.get(row)
            if kept is None or kept[1] > len(row):  # new, or cut back: from the start
                kept = (PerformanceGrammar(self.tok), 0)
            g, fed = kept
            for t in row[fed:]:
                g.feed(int(t))
            self.state.set(row, (g, len(row)))
            masks[i] = g.allowed()
        return torch.from_numpy(masks)


def as_events(notes: Sequence[PlayedNote], steps_per_second: int = 50) -> Events:
    """Notes on a fine time grid with one-second "bars", for the piano roll (`render.piano_roll`)."""
    ev_notes = [
        Note(0, int(round(n.start * steps_per_second)), n.pitch, max(1, int(round((n.end - n.start) * steps_per_second))), n.velocity) for n in notes
    ]
    end = max((n.onset + n.dur for n in ev_notes), default=steps_per_second)
    bars = [Bar(s, steps_per_second, (4, 4), 0) for s in range(0, end, steps_per_second)]
    return Events(bars, ev_notes, 1)


def write_midi(notes: Sequence[PlayedNote], path: Path) -> None:
    """A one-track MIDI file of the notes, at 120 bpm and 480 ticks per quarter (1 ms = ~1 tick)."""
    import symusic

    # Any: symusic's stubs declare Score and Track generic over the time unit and leave out their attributes
    score: Any = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 120.0))
    track: Any = symusic.Track("performance")
    ticks = 960  # per second at 120 bpm
    for n in notes:
        start = int(round(n.start * ticks))
        track.notes.append(symusic.Note(start, max(1, int(round(n.end * ticks)) - start), n.pitch, n.velocity))
    score.tracks.append(track)
    score.dump_midi(str(path))


def plan(tok: PerformanceTokenizer, request: Any, sampling: dict[str, Any]) -> Any:
    """Prompts (BOS, or a MIDI file's events without EOS) and the well-formedness constraint."""
    prompt = [tok.bos_id]
    if request.prompt:
        prompt = tok.encode(read_performance(request.prompt_file()))[:-1]
    return Plan([list(prompt) for _ in range(request.num_samples)], dict(sampling), constraint=partial(PerformanceConstraint, tok))


def show_samples(tok: PerformanceTokenizer, samples: Sequence[Any]) -> str:
    """Each sample as a line of figures and its token names, for a terminal."""
    out = []
    for i, s in enumerate(samples):
        notes = tok.decode(s.prompt + s.tokens)
        out.append(f"# sample {i}: {len(notes)} notes, {max((n.end for n in notes), default=0):.1f} s, nll {s.nll:.3f}\n")
        out.append(" ".join(tok.token_name(t) for t in s.prompt + s.tokens) + "\n")
    return "".join(out)


OUT_SUFFIXES = (".mid", ".midi", ".png")  # an --out ending in one names the file, not a folder


def output_files(request: Request) -> list[Path]:
    """What `write_samples` writes for `request`: each sample's .mid and .png."""
    return [stem.with_suffix(s) for stem in request.out_stems(request.num_samples, OUT_SUFFIXES) for s in (".mid", ".png")]


def write_samples(tok: PerformanceTokenizer, samples: Sequence[Any], request: Request) -> list[Path]:
    """Each sample as .mid and a piano-roll .png under `request.out` (or named by it: `--out take.mid`)."""
    files = OutputFiles(overwrite=request.overwrite, protect=[request.prompt])
    for s, stem in zip(samples, request.out_stems(len(samples), OUT_SUFFIXES)):
        notes = tok.decode(s.prompt + s.tokens)
        files.add(stem.with_suffix(".mid"), partial(write_midi, notes))
        files.add(stem.with_suffix(".png"), partial(_write_piano_roll, notes))
    return files.commit()


def _write_piano_roll(notes: Sequence[PlayedNote], path: Path) -> None:
    piano_roll(as_events(notes), 25).save(path, format="PNG")
