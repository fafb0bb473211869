"""`arseq analyze drift`: do errors compound? Injected errors (teacher-forced) and free-running survival."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import ArgumentParser

from arseq.analysis import drift as tf
from arseq.analysis import survival as fr
from arseq.analysis.drift import KINDS, Kind
from arseq.analysis.plots import curves_plot, survival_plot
from arseq.analysis.revise import check_revisable
from arseq.analysis.revised_survival import Revision, revised_survival
from arseq.app import generation, options
from arseq.app.planning import make_plan
from arseq.artifacts import checkpoint
from arseq.atomic import OutputFiles
from arseq.decode import generate
from arseq.errors import DataError
from arseq.limits import check_run
from arseq.outputs import claimed, csv_text, to_json

HELP = "measure whether errors compound: 'arseq analyze drift' (injected errors and free-running survival)"


@dataclass
class DriftOptions:
    """drift measurement

    Args:
        items: pieces of held-out data to inject errors into
        positions: injection positions per piece
        offsets: tokens after the error to follow (K)
        kinds: kinds of injected error
        divergence: the greedy divergence curve (--no-divergence skips it: K sequential steps per kind, most of the teacher-forced time)
        window: clustering ratio: an error in the previous this many tokens
        bootstrap: bootstrap resamples for the confidence bands
        revise_rounds: with a fill-in-the-middle music model: revise the free-running samples this many rounds (as arseq revise) and measure their survival again
        revise_candidates: resampled versions of the weakest bar per sample and round
        out: folder for drift.json, the CSVs and the plots
        overwrite: replace files of an earlier run in --out
    """

    items: int = 200
    positions: int = 8
    offsets: int = 32
    kinds: list[Kind] = field(default_factory=lambda: list(KINDS))
    divergence: bool = True
    window: int = 8
    bootstrap: int = 1000
    revise_rounds: int = 0
    revise_candidates: int = 8
    out: Path | None = None
    overwrite: bool = False


def drift_parser(generate_options: type | None) -> ArgumentParser:
    """evaluate's options (but --stride: a site fits the context) and the drift measurement's."""
    p = options.parser("drift", generate_options, prog="arseq analyze drift", num_samples=64)
    p.description = (
        "Do errors compound? Injected errors scored teacher-forced (excess NLL and KL per offset, "
        "recovery half-life) and free-running survival S(n) against (1 - e)^n. JSON on stdout; "
        "with --out, the JSON, a CSV per curve and PNG plots in that folder."
    )
    p.add_class_arguments(DriftOptions, None, as_group=True)
    p.set_defaults(seed=0)
    return p


def run_analyze(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: arseq analyze drift --checkpoint C [--data.paths ...] [--items N] [--offsets K] [--out DIR]\n\n"
            f"{HELP}.\nRun 'arseq analyze drift --help' for the options."
        )
        return 0
    if argv[0] != "drift":
        raise DataError(f"unknown analysis {argv[0]!r}; available: drift")
    return run_drift(argv[1:])


def run_drift(argv: list[str]) -> int:
    pre = options.early(argv)
    if not pre.get("checkpoint"):
        if pre["help"]:
            drift_parser(None).print_help()
            return 0
        raise DataError("drift: --checkpoint is required")
    loaded = checkpoint.load(pre["checkpoint"], pre.get("modality"), bool(pre.get("trust_modality_import")))
    opts = loaded.modality.generate_options
    parser = drift_parser(opts)
    if pre["help"]:
        parser.print_help()
        return 0
    cfg = options.parse(parser, argv, {**options.kinds(opts), **options.field_kinds([DriftOptions])})
    call = options.to_call(cfg, opts)
    args = DriftOptions(**{f.name: cfg[f.name] for f in fields(DriftOptions)})
    for flag in ("items", "positions", "offsets", "window", "bootstrap", "revise_candidates"):
        if getattr(args, flag) < 1:
            raise DataError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.revise_rounds < 0:
        raise DataError("--revise-rounds must be >= 0")
    if args.revise_rounds > 0:
        check_revisable(loaded, "--revise-rounds")
        if call.request.num_samples < 1:
            raise DataError("--revise-rounds revises the free-running samples: --num-samples must be >= 1")
    context = loaded.model.cfg.max_seq_len
    if args.offsets >= context:  # said before the stored data paths are read (and said to be)
        raise DataError(f"--offsets must be between 1 and the model's context - 1 ({context - 1}), got {args.offsets}")
    if call.run.batch_size < 1:
        raise DataError("--batch-size must be >= 1")
    check_run(loaded.model.cfg, call.request.num_samples, call.run.batch_size, minimum_samples=0)
    generation.prepare_model(loaded, call.run)  # --device, --dtype, --quantize, --compile as generate
    with claimed(args.out):  # a second drift into this --out refuses instead of replacing our files
        if args.out is not None:  # fail before minutes of work, not after
            plan = OutputFiles(overwrite=args.overwrite)
            for name in OUTPUTS + (REVISION_OUTPUTS if args.revise_rounds > 0 else ()):
                plan.add(Path(args.out) / name, "")
            plan.check()
        with checkpoint.stored_data(loaded, call.data_paths):
            result = drift(loaded, args, call, call.request.sampling.seed or 0)
        if args.out is not None:
            for path in write_drift(result, Path(args.out), args.overwrite, loaded.modality.name):
                print(f"wrote {path}", file=sys.stderr)
    print(to_json(result, indent=1))
    return 0


OUTPUTS = ("drift.json", "excess_nll.csv", "kl.csv", "divergence.csv", "survival.csv", "excess_nll.png", "kl.png", "survival.png")
REVISION_OUTPUTS = tuple(f"survival_{arm}.{ext}" for arm in ("reencoded", "revised") for ext in ("csv", "png"))


def drift(loaded: Any, args: DriftOptions, call: Any, seed: int = 0) -> dict[str, Any]:
    """Both measurements on a loaded model; the JSON of `arseq analyze drift`. `call` (arseq.app.options.Call)
    holds the sampling options of the free-running samples."""
    train_data, items, where = generation.held_out(loaded, call.data_paths)
    t0 = time.perf_counter()
    sites, measured = _injected(loaded, items, args, call.run.batch_size, seed)
    if measured is None:
        raise DataError(f"no held-out item is longer than --offsets {args.offsets} + 2 tokens ({where}); lower --offsets")
    injected = tf.report(measured, args.bootstrap, seed)
    t1 = time.perf_counter()
    reference = train_data.train.items() if train_data is not None else items
    survival = _free_running(loaded, args, call, seed, reference) if call.request.num_samples > 0 else {}
    return {
        "data": where,
        "modality": loaded.modality.name,
        "context": loaded.model.cfg.max_seq_len,
        "offsets": args.offsets,
        "sites": len(sites),
        "clean_nll_mean": float(measured.clean_nll.mean()),
        "injected": injected,
        "free_running": survival,
        "seconds": {"teacher_forced": round(t1 - t0, 2), "free_running": round(time.perf_counter() - t1, 2)},
    }


def _injected(loaded: Any, items: list[np.ndarray], args: DriftOptions, batch_size: int, seed: int) -> tuple[list[tf.Site], tf.DriftResult | None]:
    """Teacher-forced: errors injected at random sites of the held-out items (never at or as a control token)."""
    tok, model, controls = loaded.tokenizer, loaded.model, loaded.controls
    width = controls.width if controls is not None else 0
    control_ids = range(controls.offset, controls.offset + controls.size) if controls is not None else range(0)
    rng = np.random.default_rng(seed)
    sites = tf.choose_sites(items, args.items, args.positions, args.offsets, model.cfg.max_seq_len, rng, start=1 + width)
    if not sites:
        return sites, None

    def mistake(tokens: np.ndarray, pos: int, r: np.random.Generator) -> int | None:
        return loaded.modality.plausible_mistake(tok, tokens, pos, r)

    specials = (tok.pad_id, tok.bos_id, tok.eos_id, *control_ids)
    kwargs = {"kinds": args.kinds, "batch_size": batch_size, "pad_id": tok.pad_id, "seed": seed, "diverge": args.divergence}
    return sites, tf.measure(model, items, sites, args.offsets, specials=specials, mistake=mistake, **kwargs)


def _free_running(loaded: Any, args: DriftOptions, call: Any, seed: int, reference: list[np.ndarray]) -> dict[str, Any]:
    """Free-running: survival S(n) of samples drawn with no constraint and no guidance (the model alone), and
    with --revise-rounds the same samples revised."""
    planned = make_plan(loaded, call.request)
    prompts, cfg = planned.prompts, planned.cfg
    seeds = [seed + i for i in range(len(prompts))]
    head = loaded.controls.head if loaded.controls is not None else 0
    slots = min(call.run.batch_size, len(prompts))
    generated = generate(
        loaded.model, prompts, cfg, pad_id=loaded.tokenizer.pad_id, seeds=seeds, head=head, slots=slots, compile=call.run.compile
    ).tokens
    predicate = loaded.modality.error_predicate(loaded.tokenizer, reference)

    def mark(gen: list[list[int]]) -> list[np.ndarray]:  # a fresh constraint each time: it keeps state per row
        return fr.mark_errors(prompts, gen, planned.constraint() if planned.constraint is not None else None, predicate)

    errors = mark(generated)
    sampling = {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "min_p", "max_new_tokens")}
    survival = {
        "curve": fr.survival(errors, n_boot=min(args.bootstrap, 500), seed=seed),
        "clustering": fr.clustering_ratio(errors, args.window),
        "sampling": {**sampling, "constraint": "off"},
    }
    if args.revise_rounds > 0:
        revision = Revision(args.revise_rounds, args.revise_candidates, seed, args.window, min(args.bootstrap, 500))
        survival["revision"] = revised_survival(loaded, prompts, generated, planned.conditions, mark, revision)
    return survival


def write_drift(result: dict[str, Any], out: Path, overwrite: bool, name: str) -> list[Path]:
    """drift.json, one CSV per curve (kinds as a column), and the plots, all or nothing."""
    files = OutputFiles(overwrite=overwrite)
    files.add(out / "drift.json", to_json(result, indent=1))
    kinds = result["injected"]
    for key, label in (("excess_nll", "excess NLL (nats)"), ("kl", "KL(clean || corrupted) (nats)"), ("divergence", "greedy continuations differ")):
        if not all(key in c for c in kinds.values()):
            continue
        rows = [
            {"kind": k, "offset": o + 1, "mean": c[key]["mean"][o], "lo": c[key]["lo"][o], "hi": c[key]["hi"][o]}
            for k, c in kinds.items()
            for o in range(len(c[key]["mean"]))
        ]
        files.add(out / f"{key}.csv", csv_text(rows))
        if key != "divergence":
            files.add(out / f"{key}.png", curves_plot(kinds, key, label, f"{name}: {label} after one injected error"))
    free = result["free_running"]
    revision = free.get("revision", {})
    for label, arm in (("", free), ("reencoded", revision.get("reencoded")), ("revised", revision.get("revised"))):
        _survival_files(files, out, arm, label, name)
    return files.commit()


def _survival_files(files: OutputFiles, out: Path, arm: dict[str, Any] | None, label: str, name: str) -> None:
    """survival.csv and .png of one arm of the free-running samples: as drawn (label ""), re-encoded or revised."""
    s = arm.get("curve") if arm else None
    if not arm or not s:
        return
    suffix, what = (f"_{label}", f"samples {label}") if label else ("", "without the constraint")
    cols = ("n", "survival", "survival_lo", "survival_hi", "independent", "independent_lo", "independent_hi")
    files.add(out / f"survival{suffix}.csv", csv_text([dict(zip(cols, v)) for v in zip(*(s[c] for c in cols))]))
    ratio = arm["clustering"]["ratio"]
    title = f"{name}: survival, {what} (clustering ratio {'n/a' if ratio is None else f'{ratio:.2f}'})"
    files.add(out / f"survival{suffix}.png", survival_plot(s, title))
