"""Round trips of the score tokenizer on music21's corpus outside Bach: exact files and, per inexact file, why.

    python benchmarks/bench_music_roundtrip.py [--per-composer 3] [--midi 7] [--workers 2] [--ppq 48 ...]

The set is fixed: each composer's first `--per-composer` works in sorted order (`music21_composers`,
MusicXML/mxl, Humdrum .krn and ABC as the corpus stores them), plus the first work of the first `--midi`
composers written to MIDI by music21 (the corpus has no .mid files) and read back from that file. Every
file goes through `prepare --check-roundtrip`'s own path (parse, encode, decode, write, re-read, compare
notes). Prints one JSON object: exact fraction (and the issue's >= 0.9 target), per reason the files and
notes, per file exact / skipped / the reasons, and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arseq.modalities.base import Example  # noqa: E402
from arseq.modalities.music.corpus import COMPOSERS, music21_composers  # noqa: E402
from arseq.modalities.music.reading import read_in_parallel, roundtrip_report  # noqa: E402
from arseq.tokenizers.score import ScoreTokenizer  # noqa: E402

NAMED = ("monteverdi", "palestrina", "haydn", "handel", "verdi", "joplin", "trecento")  # issue 17's composers


def midi_copies(items: list[tuple[str, str]], count: int, folder: Path) -> list[tuple[str, str]]:
    """The first work of each of the first `count` composers, written as MIDI by music21."""
    from music21 import converter

    out, seen = [], set()
    for name, path in items:
        composer = name.split("/")[0]
        if composer in seen or len(seen) >= count:
            continue
        seen.add(composer)
        target = folder / (name.replace("/", "__") + ".mid")
        converter.parse(path).write("midi", fp=str(target))
        out.append((name + ".mid", str(target)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-composer", type=int, default=3)
    p.add_argument("--midi", type=int, default=7, help="composers whose first work is also read as MIDI")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-grace", action="store_true", help="a tokenizer without grace tokens (the old vocabulary)")
    p.add_argument("--ppq", type=int, default=24, help="grid steps per quarter (48 also holds 64th notes)")
    p.add_argument("--max-dur-quarters", type=int, default=16)
    p.add_argument("--max-bar-quarters", type=int, default=16)
    args = p.parse_args()
    tok = ScoreTokenizer(ppq=args.ppq, max_dur_quarters=args.max_dur_quarters, max_bar_quarters=args.max_bar_quarters, grace=not args.no_grace)
    composers = NAMED + tuple(c for c in COMPOSERS if c not in NAMED)
    items = music21_composers(composers, per_composer=args.per_composer)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        items += midi_copies(items, args.midi, Path(tmp))
        jobs = [(name, path, tok.to_dict(), True) for name, path in items]
        results = list(read_in_parallel(jobs, args.workers))
    seconds = time.perf_counter() - t0
    examples = [Example(tokens, name, exact, info) for name, tokens, exact, info, skip in results if skip is None]
    files = {}
    for name, _, exact, info, skip in results:
        lost = {k.removeprefix("lost."): int(v) for k, v in info.items() if k.startswith("lost.")}
        files[name] = "skipped: " + skip if skip is not None else "exact" if exact else lost
    exact = sum(e.exact is True for e in examples)
    formats = Counter(Path(path).suffix.lower() for _, path in items)
    report = roundtrip_report(examples)
    result = {
        "files": len(items),
        "read": len(examples),
        "skipped": len(items) - len(examples),
        "exact": exact,
        "exact_fraction": round(exact / max(1, len(examples)), 4),
        "formats": dict(sorted(formats.items())),
        "composers": len({n.split("/")[0] for n, _ in items}),
        "grace_notes": int(sum(e.info.get("grace", 0) for e in examples)),
        "reasons": {k: {kk: v[kk] for kk in ("reason", "files", "notes")} for k, v in report["roundtrip_reasons"].items()},
        "per_file": files,
        "tokenizer": tok.to_dict(),
        "seconds": round(seconds, 1),
        "workers": args.workers,
        "cpu_cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    result["targets"] = {"exact_fraction>=0.9": result["exact_fraction"] >= 0.9}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
