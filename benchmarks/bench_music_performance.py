"""Performance tokens vs score tokens on humanized chorales: whose samples time and voice notes like the
held-out performances?

    python benchmarks/bench_music_performance.py [--model small|config] [--chorales 40] [--steps 300] [--samples 8]

Makes performances of the first `--chorales` Bach chorales (two takes each, `arseq.modalities.music.humanize`) for training
and of the next 8 for reference, trains the same model once with `modality.tokenizer: performance`
and once with the score tokenizer (which moves the played onsets onto its grid and drops velocities),
samples both, and compares each sample set with the held-out performances. `--model small` (the default) is
2 layers of width 64, block 256, batch 8; `--model config` keeps `configs/music/performance.yaml`'s model and
data shapes (4 layers of width 128, 4 heads, block 512, batch 16) for both tokenizers.

- `ioi_l1`: L1 distance between the inter-onset-interval histograms (10 ms bins up to 1.5 s, the rest in
  the last bin), 0 = the same distribution, 2 = disjoint;
- `velocity_std`: the spread of velocities, against the reference's.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arseq.modalities.music import performance as perf  # noqa: E402
from arseq.modalities.music.humanize import humanize  # noqa: E402
from arseq.tokenizers.score import ScoreTokenizer  # noqa: E402

EDGES = np.append(np.arange(0, 1510, 10), 10_000)
# Overrides of configs/music/performance.yaml's model and data shapes; "config" trains what it ships.
MODELS: dict[str, list[str]] = {
    "small": ["--model.n_layer", "2", "--model.d_model", "64", "--model.n_head", "4", "--data.block_size", "256", "--data.batch_size", "8"],
    "config": [],
}


def make_performances(first: int, count: int, folder: Path, takes: int) -> None:
    from music21 import converter

    from arseq.modalities.music.corpus import bach_chorales

    folder.mkdir(parents=True)
    tok = ScoreTokenizer()
    for i, (name, path) in enumerate(bach_chorales()[first : first + count]):
        ev = tok.extract(converter.parse(path))
        for take in range(takes):
            perf.write_midi(humanize(ev, tok.ppq, seed=1000 * (first + i) + take), folder / f"{name.replace('/', '_')}_{take}.mid")


def train_and_sample(tokenizer: str, data: Path, work: Path, model: str, steps: int, samples: int) -> list[Path]:
    env = {**os.environ, "ARSEQ_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    run = work / f"run_{tokenizer}"
    common = [
        "--modality.tokenizer",
        tokenizer,
        "--data.paths",
        str(data),
        *MODELS[model],
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.limit_val_batches",
        "4",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.enable_progress_bar",
        "false",
    ]
    subprocess.run(
        [sys.executable, "-m", "arseq", "train", "--config", str(ROOT / "configs/music/performance.yaml"), *common],
        env=env,
        check=True,
        capture_output=True,
    )
    out = work / f"samples_{tokenizer}"
    extra = ["--bars", "12"] if tokenizer == "score" else ["--max-new-tokens", "1200"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "arseq",
            "generate",
            "--checkpoint",
            str(run / "music"),
            "--num-samples",
            str(samples),
            "--seed",
            "0",
            "--out",
            str(out),
            *extra,
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return sorted(out.glob("*.mid"))


def stats(pieces: list[list[perf.PlayedNote]], reference: np.ndarray | None = None) -> dict[str, float]:
    hist = perf.ioi_histogram(pieces, EDGES)
    out = {"velocity_std": round(float(np.std([n.velocity for p in pieces for n in p])), 2), "notes": sum(map(len, pieces))}
    if reference is not None:
        out["ioi_l1"] = round(float(np.abs(hist - reference).sum()), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="small", help="small: 2 x 64, block 256, batch 8; config: performance.yaml's")
    p.add_argument("--chorales", type=int, default=40)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--samples", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_performances(0, args.chorales, work / "train", takes=2)
        make_performances(args.chorales, 8, work / "heldout", takes=1)
        held = [perf.read_performance(f) for f in sorted((work / "heldout").glob("*.mid"))]
        ref = perf.ioi_histogram(held, EDGES)
        result = {"reference": stats(held)}
        for kind in ("performance", "score"):
            files = train_and_sample(kind, work / "train", work, args.model, args.steps, args.samples)
            result[f"{kind}_model"] = stats([perf.read_performance(f) for f in files], ref)
    result["settings"] = vars(args)
    result["performance_closer"] = {
        "ioi": result["performance_model"]["ioi_l1"] < result["score_model"]["ioi_l1"],
        "velocity_std": abs(result["performance_model"]["velocity_std"] - result["reference"]["velocity_std"])
        < abs(result["score_model"]["velocity_std"] - result["reference"]["velocity_std"]),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
