"""`arseq prepare` on a folder of MIDI files against MidiTok's REMI and against music21's reading.

    python benchmarks/bench_music_prepare.py [--files 2000] [--workers 2] [--music21-files 60] [--sources 24]

Makes `--files` MIDI files from music21's Bach chorales (the first `--sources` of them, read once with
music21): each file is one to three chorales, each transposed by -5..+6 semitones, played one after
the other, written with symusic. Then, side by side, on the same files:

- arseq: `arseq prepare` (CLI, fresh cache, `--data.workers N`, the fast path, `midi_reader: symusic`); files/s and tokens/s
  from the `seconds` prepare reports (reading, tokenizing, writing the cache; not Python's start-up,
  reported apart as `arseq_wall_s`), peak RSS of the process and its workers;
- MidiTok 3.1 REMI with its defaults, reading with its own symusic, one process (MidiTok has no worker
  pool for tokenizing files); tokens per note from its token and note counts;
- music21's score reading, `converter.parse` on arseq's grid then `read_score` (what `prepare` did with music21
  until the reference skipped music21's notation step; what a music21 user writes), in `--workers`
  processes, on the first `--music21-files` files, per file, extrapolated: `music21_files_per_s`, the ratio
  the target is set against;
- the reference (`modality.midi_reader: music21`: music21's import up to quantizing, in `prepare` with the
  same workers) on the same files: `music21_reference_files_per_s`; on those files, whether it and the fast
  path give the same tokens (`identical_tokens`: the share that do).

Prints one JSON object with the issue's keys and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arseq.tokenizers.score import Bar, Events, Note, ScoreTokenizer  # noqa: E402
from arseq.tokenizers.score.midi_writing import write_midi  # noqa: E402


def source_pieces(count: int, tok: ScoreTokenizer) -> list[Events]:
    """The first `count` Bach chorales as events (music21 reads them: ~0.5 s each)."""
    from music21 import converter

    from arseq.modalities.music.corpus import bach_chorales

    out = []
    for _, path in bach_chorales()[: count * 2]:
        try:
            ev = tok.extract(converter.parse(path))
        except ValueError:
            continue
        if ev.num_parts == 4:
            out.append(ev)
        if len(out) == count:
            break
    return out


def recombine(pieces: list[Events], rng: np.random.Generator) -> Events:
    """One to three pieces, each transposed (pitches kept in 0..127), one after the other."""
    bars: list[Bar] = []
    notes: list[Note] = []
    at = 0
    for i in rng.choice(len(pieces), size=int(rng.integers(1, 4))):
        ev = pieces[int(i)]
        shift = int(rng.integers(-5, 7))
        shift = max(-min(n.pitch for n in ev.notes), min(shift, 127 - max(n.pitch for n in ev.notes)))
        key = max(-7, min(7, ((ev.bars[0].key + 7 * shift) + 6) % 12 - 6))  # the key signature moved along
        bars += [Bar(b.start + at, b.length, b.ts, key, b.tempo) for b in ev.bars]
        notes += [Note(n.part, n.onset + at, n.pitch + shift, n.dur) for n in ev.notes if n.dur > 0]
        at = bars[-1].start + bars[-1].length
    return Events(bars, notes, 4)


def make_corpus(folder: Path, files: int, sources: int, seed: int = 0) -> None:
    tok = ScoreTokenizer()
    pieces = source_pieces(sources, tok)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        write_midi(recombine(pieces, rng), tok.ppq, folder / f"piece_{i:06d}.mid")


def arseq_prepare(folder: Path, workers: int, reader: str, cache: Path) -> tuple[dict, float, float]:
    """(prepare's JSON, wall seconds, peak RSS MB of the process and its workers) of one cold run."""
    config = cache / f"{reader}.yaml"
    config.write_text(
        json.dumps({"modality": {"name": "music", "midi_reader": reader}, "data": {"paths": str(folder), "val_fraction": 0.02, "workers": workers}})
    )
    env = {**os.environ, "ARSEQ_CACHE_DIR": str(cache / reader), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    script = (
        "import resource, sys; from arseq.cli import main; code = main(sys.argv[1:]); "
        "sys.stderr.write('RSS %d %d\\n' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
    )
    out = subprocess.run([sys.executable, "-c", script, "prepare", "--config", str(config)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"arseq prepare failed: {out.stderr.strip().splitlines()[-1:]}")
    rss = [line.split()[1:] for line in out.stderr.splitlines() if line.startswith("RSS ")][-1]
    return json.loads(out.stdout), wall, max(int(rss[0]), int(rss[1])) / 1024


def miditok_remi(files: list[Path]) -> tuple[float, int, int]:
    """(seconds, tokens, notes) of MidiTok's REMI (default config) reading and tokenizing every file."""
    import miditok
    import symusic

    tokenizer = miditok.REMI()
    tokens = notes = 0
    t0 = time.perf_counter()
    for f in files:
        seqs = tokenizer(f)
        tokens += sum(len(s.ids) for s in seqs) if isinstance(seqs, list) else len(seqs.ids)
    seconds = time.perf_counter() - t0
    for f in files:  # counted apart, so MidiTok's time holds its own reading only
        notes += symusic.Score(str(f)).note_num()
    return seconds, tokens, notes


def parse_score(path: Path) -> int:
    """Notes of one MIDI file read as a music21 score, notation and all (`converter.parse`), on arseq's grid."""
    from music21 import converter

    from arseq.tokenizers.score.reading import read_score

    tok = ScoreTokenizer()
    return len(read_score(tok, converter.parse(str(path), quarterLengthDivisors=(tok.ppq,))).notes)


def music21_scores(files: list[Path], workers: int) -> float:
    """Files a second of `parse_score` over `files` in `workers` processes (a file that fails counts as read)."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_try_parse_score, files))
    return len(files) / (time.perf_counter() - t0)


def _try_parse_score(path: Path) -> int:
    try:
        return parse_score(path)
    except Exception:  # a file music21 refuses (a measure over 16 quarters) took its time all the same
        return 0


def same_tokens(files: list[Path]) -> float:
    """The share of files the fast and music21 paths give identical tokens for."""
    from arseq.modalities.music.reading import read_events

    tok = ScoreTokenizer()
    same = [tok.encode_events(read_events(tok, f, "symusic")) == tok.encode_events(read_events(tok, f, "music21")) for f in files]
    return sum(same) / max(1, len(same))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--music21-files", type=int, default=60, help="files read by music21's path (extrapolated per file)")
    p.add_argument("--sources", type=int, default=24, help="chorales the files are made from")
    p.add_argument("--no-miditok", action="store_true", help="arseq alone (e.g. --files 20000 for peak RSS)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, subset, cache = Path(tmp) / "midi", Path(tmp) / "subset", Path(tmp) / "cache"
        cache.mkdir()
        t0 = time.perf_counter()
        make_corpus(folder, args.files, args.sources)
        made = time.perf_counter() - t0
        files = sorted(folder.glob("*.mid"))
        subset.mkdir()
        for f in files[: args.music21_files]:
            (subset / f.name).symlink_to(f)
        fast, fast_wall, rss = arseq_prepare(folder, args.workers, "symusic", cache)
        slow = arseq_prepare(subset, args.workers, "music21", cache)[0] if args.music21_files else None
        m21_fps = music21_scores(files[: args.music21_files], args.workers) if args.music21_files else float("nan")
        mt_seconds, mt_tokens, mt_notes = (None, 0, 0) if args.no_miditok else miditok_remi(files)
        identical = same_tokens(files[: args.music21_files]) if args.music21_files else None
    arseq_fps = fast["num_items"] / fast["seconds"]
    reference_fps = slow["num_items"] / slow["seconds"] if slow else float("nan")
    mt_fps = len(files) / mt_seconds if mt_seconds else float("nan")
    result = {
        "files": len(files),
        "workers": args.workers,
        "arseq_files_per_s": round(arseq_fps, 1),
        "arseq_tokens_per_s": round(fast["num_tokens"] / fast["seconds"]),
        "arseq_wall_s": round(fast_wall, 2),
        "music21_files_per_s": round(m21_fps, 2),
        "music21_reference_files_per_s": round(reference_fps, 2),
        "arseq_over_reference": round(arseq_fps / reference_fps, 1) if slow else None,
        "music21_files": slow["num_items"] if slow else 0,
        "miditok_files_per_s": round(mt_fps, 1),
        "miditok_tokens_per_s": round(mt_tokens / mt_seconds) if mt_seconds else None,
        "tokens_per_note": fast["tokens_per_note"],
        "miditok_tokens_per_note": round(mt_tokens / mt_notes, 3) if mt_notes else None,
        "peak_rss_mb": round(rss, 1),
        "identical_tokens": None if identical is None else round(identical, 4),
        "skipped": len(fast["skipped"]),
        "corpus_seconds": round(made, 1),
        "cpu_cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    result["targets"] = {
        "arseq>=miditok_files_per_s": arseq_fps >= mt_fps,
        "arseq>=30x_music21": arseq_fps >= 30 * m21_fps,
        "tokens_per_note<=miditok": mt_notes > 0 and result["tokens_per_note"] <= result["miditok_tokens_per_note"],
        "peak_rss<2GB": rss < 2048,
        "identical_tokens==1": identical == 1.0,
    }
    print(json.dumps(result, indent=1).replace("NaN", "null"))


if __name__ == "__main__":
    main()
