"""`arseq prepare --check-roundtrip` on the Bach chorales: cold (empty cache) and cached, as a user runs it.

    python benchmarks/bench_music_prepare.py [--config configs/music/bach_chorales.yaml]

Runs the CLI twice in a fresh cache folder and prints one JSON object: wall and CPU seconds of each run
(CPU = user + system of the process and its parsing workers, a figure that a busy machine inflates less
than wall time), the JSON's own `seconds`, num_items, roundtrip_exact, tokens_per_note, and the issue's
targets (>= 340 pieces, roundtrip_exact >= 0.99, cold <= 60 s wall, cached `seconds` <= 1).
music21 keeps its own parse cache (pickles in its scratch folder); `music21_cache_files` says how warm it was.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_prepare(config: str, cache: str) -> tuple[dict, float, float]:
    env = {**os.environ, "ARSEQ_CACHE_DIR": cache, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "arseq", "prepare", "--config", config, "--check-roundtrip"],
                         env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out.stdout), wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/music/bach_chorales.yaml")
    args = p.parse_args()
    from music21 import environment

    scratch = Path(environment.Environment().getRootTempDir())
    m21_files = len(list(scratch.glob("m21-*.p*"))) if scratch.is_dir() else 0
    with tempfile.TemporaryDirectory() as cache:
        cold, cold_wall, cold_cpu = run_prepare(args.config, cache)
        cached, cached_wall, cached_cpu = run_prepare(args.config, cache)
    result = {
        "num_items": cold["num_items"],
        "skipped": len(cold["skipped"]),
        "roundtrip_exact": cold["roundtrip_exact"],
        "tokens_per_note": cold["tokens_per_note"],
        "cold_wall_s": round(cold_wall, 2),
        "cold_cpu_s": round(cold_cpu, 2),
        "cold_seconds": cold["seconds"],
        "cached_wall_s": round(cached_wall, 2),
        "cached_cpu_s": round(cached_cpu, 2),
        "cached_seconds": cached["seconds"],
        "cpu_cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "music21_cache_files": m21_files,
    }
    result["targets"] = {
        "num_items>=340": result["num_items"] >= 340,
        "roundtrip_exact>=0.99": result["roundtrip_exact"] >= 0.99,
        "cold_wall<=60s": cold_wall <= 60,
        "cached_seconds<=1": cached["seconds"] <= 1,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
