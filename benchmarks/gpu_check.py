"""The GPU check: one prepared script, a few minutes on one GPU, one JSON object on stdout.

For each modality a tiny model is trained for a few steps from its shipped config (music: Bach chorales;
images: digits; proteins: the Swiss-Prot sample in ../shared/data; text: tiny Shakespeare), then sampled on
the GPU through the decode engine: constrained and conditioned with guidance, eager in float32, compiled
(CUDA graphs) in bfloat16, speculative with n-gram drafts, and greedy eager vs compiled for identity. Then the
music and text models are served together as `arseq serve` runs them (benchmarks/gpu_serve.py), and
bench_generate and bench_engine run on CUDA. Every arm records ok / its one-line error, seconds and tokens/s;
nothing here asserts, so one failure does not hide the others. Device time is scarce: arms not started within
`--budget-s` are recorded as skipped, and with `--out` the JSON so far is rewritten after every modality, so a
run cut short still says what it saw.

    python -m benchmarks.gpu_check [--steps 30] [--skip-bench] [--data DIR] [--out FILE] [--budget-s 420]

On a lent GPU machine (no network, no arseq dependencies but torch and lightning), `benchmarks/gpu_prepare.sh`
here and `benchmarks/gpu_check.sh` there run it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "music": "configs/music/bach_chorales.yaml",
    "image": "configs/image/digits.yaml",
    "protein": "configs/protein/swissprot_small.yaml",
    "text": "configs/text/shakespeare_char_cpu.yaml",
}


def data_flags(name: str, data: Path) -> list[str]:
    """The shared data files a config reads (music and images are built in)."""
    if name == "protein":
        return [f"--data.paths={data / 'proteins_train.fasta'}", f"--data.val_paths={data / 'proteins_val.fasta'}"]
    return [f"--data.paths={data / 'tinyshakespeare.txt'}"] if name == "text" else []


def train(name: str, root: Path, steps: int, device: str, data: Path) -> Path:
    from arseq.cli import main

    argv = [
        "train",
        "--config",
        str(ROOT / CONFIGS[name]),
        *data_flags(name, data),
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        "--trainer.check_val_every_n_epoch=null",
        "--trainer.limit_val_batches=2",
        f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
    ]
    if main(argv) != 0:
        raise RuntimeError(f"training {name} failed")
    return sorted((root / name).glob("version_*"))[-1]


def arm(fn) -> dict:
    t0 = time.perf_counter()
    try:
        out = fn()
        seconds = time.perf_counter() - t0
        tokens = sum(len(s.tokens) for s in out)
        return {"ok": True, "seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1), "out": out}
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        return {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0], "where": traceback.format_exc().splitlines()[-3:]}


def check_modality(name: str, run: Path, device: str, left: Callable[[], float]) -> dict:
    import arseq

    controls = arseq.load(run).loaded.controls
    cond = [f"{f}={next(iter(v))}" for f, v in list(controls.fields.items())[:1]] if controls is not None else []
    base = {"device": device, "seed": 0, "max_new_tokens": 96, "cond": cond, "batch_size": 8}
    guide = 2.0 if cond else 1.0

    def fresh(n: int, **kw):  # a freshly loaded model per arm (--dtype converts the model it is given); files, not stdout
        return lambda: arseq.load(run).generate(n, out=Path(tempfile.mkdtemp()), **base, **kw)

    arms = {
        "eager_fp32_guided": fresh(8, dtype="float32", compile="off", guidance=guide),
        "compiled_bf16_guided": fresh(8, dtype="bfloat16", compile="on", guidance=guide),
        "speculative_ngram_compiled": fresh(8, dtype="bfloat16", compile="on", guidance=1.0, draft="ngram"),
        "greedy_eager": fresh(4, dtype="float32", compile="off", temperature=0, guidance=1.0),
        "greedy_compiled": fresh(4, dtype="float32", compile="on", temperature=0, guidance=1.0),
    }
    result = {k: arm(fn) if left() > 0 else {"ok": False, "skipped": "time budget (--budget-s) spent"} for k, fn in arms.items()}
    a, b = result["greedy_eager"], result["greedy_compiled"]
    same = a["ok"] and b["ok"] and [s.tokens for s in a["out"]] == [s.tokens for s in b["out"]]
    for r in result.values():
        r.pop("out", None)
    return {"conditions": cond, "identical_greedy_compiled": same, **result}


def bench(module: str, flags: list[str], seconds: float) -> dict:
    if seconds < 30:
        return {"skipped": "time budget (--budget-s) spent"}
    try:
        done = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return {"error": f"still running after {seconds:.0f} s (the time budget left)"}
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1], "rc": done.returncode}


def serve(runs: dict[str, Path], device: str, seconds: float) -> dict:
    """The server arm (gpu_serve.check_serve) on the music and text models, if both trained and time is left."""
    if seconds < 60:
        return {"skipped": "time budget (--budget-s) spent"}
    if not {"music", "text"} <= set(runs):
        return {"skipped": "the music or text model did not train"}
    try:
        from benchmarks.gpu_serve import check_serve

        return check_serve({name: runs[name] for name in ("music", "text")}, device, timeout=min(120, seconds))
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        return {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0], "where": traceback.format_exc().splitlines()[-3:]}


def save(out: dict, path: Path | None) -> None:
    """The JSON so far, replaced whole (a run killed at its limit leaves what it had)."""
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per tiny model")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu: a rehearsal of the script where no GPU is lent")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder of proteins_*.fasta and tinyshakespeare.txt")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here, after every modality")
    ap.add_argument("--budget-s", type=float, default=420, help="start no arm past this many seconds; the benchmarks get what is left")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(2)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    out: dict = {"device": device_name, "torch": torch.__version__, "modalities": {}}
    t0 = time.perf_counter()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    runs: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON alone
        for name in CONFIGS:
            if left() <= 0:
                out["modalities"][name] = {"skipped": "time budget (--budget-s) spent"}
                continue
            try:
                runs[name] = train(name, Path(tmp), args.steps, args.device, args.data)
                out["modalities"][name] = check_modality(name, runs[name], args.device, left)
            except Exception as e:  # noqa: BLE001
                out["modalities"][name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
            save(out, args.out)
        out["serve"] = serve(runs, args.device, left())
        save(out, args.out)
    if not args.skip_bench:
        generate_flags = ["--device", args.device, "--new-tokens", "128", "--repeats", "3"]
        out["bench_generate"] = bench("benchmarks.bench_generate", generate_flags, left() * 0.6)
        out["bench_engine"] = bench("benchmarks.bench_engine", ["--device", args.device, "--compile", "on"], left())
    out["seconds"] = round(time.perf_counter() - t0, 1)
    save(out, args.out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
