"""What each CLI verb does, as plain functions usable from Python: the glue between modalities,
the data cache, the model and Lightning. The CLI only parses arguments and calls these."""
from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arseq import drafting
from arseq.checkpoint import Loaded, load_checkpoint_file
from arseq.data.loader import train_loader, val_loader
from arseq.data.prepare import DataConfig, Prepared, prepare
from arseq.errors import first_line
from arseq.modalities import DataError, EvalInputs, Modality, Sample
from arseq.models.optim import OptimConfig
from arseq.models.sampling import SamplingConfig, generate
from arseq.models.scoring import sequence_nll, unigram_baseline
from arseq.models.transformer import TransformerConfig


def run_prepare(modality: Modality, options: dict[str, Any], data: DataConfig, check_roundtrip: bool = False) -> dict[str, Any]:
    """Tokenize and cache; return the JSON report of `arseq prepare`."""
    prepared = prepare(modality, options, data, check_roundtrip=check_roundtrip)
    return {**prepared.stats, "seconds": round(prepared.seconds, 4), "cached": prepared.cached, "cache_dir": str(prepared.directory)}


def run_train(
    modality: Modality,
    options: dict[str, Any],
    data: DataConfig,
    model: dict[str, Any],
    optim: dict[str, Any],
    trainer_args: dict[str, Any],
    seed: int = 1337,
    ckpt_path: str | None = None,
    selector: str | None = None,
    compile: bool = False,
    init_from: str | None = None,
    init_from_resize_vocab: bool = False,
) -> Path:
    """Train a model; return the run directory (checkpoints under `checkpoints/`).

    `selector` is how the config named the modality (a registered name or an import path); it is
    stored in checkpoints so that loading finds an unregistered modality class too. `init_from` starts
    from existing weights (see arseq.interop.init_from); `ckpt_path` resumes a run.
    """
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lightning.fabric.plugins import CheckpointIO

    from arseq.models.checkpoint_io import AtomicCheckpointIO, clean_checkpoint_folder
    from arseq.models.lightning_module import ARModule, LastCheckpoint

    if trainer_args.get("max_steps") in (None, -1):
        raise DataError("set trainer.max_steps: training runs for a number of steps, not epochs")
    if not isinstance(trainer_args["max_steps"], int) or trainer_args["max_steps"] < 1:
        raise DataError(f"trainer.max_steps must be a positive integer, got {trainer_args['max_steps']!r}")
    TransformerConfig(vocab_size=1, max_seq_len=data.block_size, **model)  # fail on a bad size before reading data
    OptimConfig(**optim)
    L.seed_everything(seed, verbose=False)
    tokenizer, resumed = None, None
    if ckpt_path:  # resume with the checkpoint's tokenizer, never a refitted one
        resumed = load_checkpoint_file(Path(ckpt_path))["arseq"]
        tokenizer = modality.load_tokenizer(resumed["tokenizer"])
        clean_checkpoint_folder(Path(ckpt_path).parent)  # what a kill of that run left behind
    source = None
    if init_from:  # fine-tune: an arseq source's tokenizer too, so that token ids keep their meaning
        from arseq.interop.init_from import initialise, read_source

        if ckpt_path:
            raise DataError("--init-from starts a new run from weights, --ckpt_path resumes a run: give one of them")
        source = read_source(init_from, modality, model, data.block_size)
        tokenizer = source.tokenizer
    prepared = prepare(modality, options, data, tokenizer=tokenizer)
    tok = prepared.tokenizer
    model_cfg = TransformerConfig(vocab_size=tok.vocab_size, max_seq_len=data.block_size, **model)
    if resumed is not None:
        theirs = resumed.get("model", {})
        differ = [f"{k} {theirs.get(k)} vs {v}" for k, v in asdict(model_cfg).items() if k in theirs and theirs[k] != v]
        if differ:
            raise DataError(f"--ckpt_path {ckpt_path}: its model differs from the config's ({', '.join(differ)}); "
                            "resume with the config it was trained with")
    meta = {
        "modality": {"name": selector or modality.name, "options": options},
        "tokenizer": tok.to_dict(),
        "data": asdict(data),
        "model": asdict(model_cfg),
    }
    module = ARModule(asdict(model_cfg), optim, meta, compile)
    init_note = initialise(module.model, source, init_from_resize_vocab) if source else None
    augment = None if type(modality).augment is Modality.augment else modality.augment
    train = train_loader(prepared.directory / "train.npy", data.block_size, data.batch_size, seed, augment, data.num_workers)
    val = val_loader(prepared.val, data.block_size, data.batch_size, tok.pad_id)

    root = trainer_args.pop("default_root_dir", None) or "runs"
    loggers: list[Any] = [CSVLogger(root, name=modality.name)]
    if find_spec("tensorboard") or find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(root, name=modality.name, version=loggers[0].version, default_hp_metric=False))
    last = LastCheckpoint(every_n_steps=None if val is not None else max(1, trainer_args["max_steps"] // 10))  # no validation: save ten times
    best = ModelCheckpoint(
        monitor="val/loss", mode="min", save_top_k=1, filename="best-step{step}-loss{val/loss:.4f}",
        auto_insert_metric_name=False,
    ) if val is not None else None
    trainer_args.setdefault("logger", loggers)
    monitor = [LearningRateMonitor(logging_interval="step")] if trainer_args["logger"] not in (False, None, []) else []
    callbacks = [c for c in (best, last) if c] + monitor + list(trainer_args.pop("callbacks", None) or [])
    plugins = list(trainer_args.pop("plugins", None) or [])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())  # a kill never leaves a broken last.ckpt
    trainer_args["plugins"] = plugins
    trainer = L.Trainer(default_root_dir=root, callbacks=callbacks, **trainer_args)
    if compile:
        check_compile(trainer.strategy.root_device)
    if trainer.is_global_zero:
        print(f"model: {module.model.num_params() / 1e6:.2f}M parameters, vocab {tok.vocab_size}, context {data.block_size}; "
              f"data: {prepared.train.num_tokens:,} train / {prepared.val.num_tokens:,} val tokens")
        if init_note:
            print(init_note)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
    run_dir = Path(trainer.log_dir or root)
    if trainer.is_global_zero:
        best_path = (best.best_model_path if best else "") or "-"
        print(f"run directory: {run_dir}\n  last checkpoint: {last.path}\n  best checkpoint: {best_path}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Join gloo/NCCL's threads now: left to static destructors at exit, they abort the process (rc -6)
        torch.distributed.destroy_process_group()
    return run_dir


def check_compile(device: torch.device) -> None:
    """Fail in one line before training if torch.compile cannot build kernels here (e.g. no C++ compiler)."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.zeros(4, device=device))
    except Exception as e:
        raise DataError(f"compile: true, but torch.compile does not work on {device}: {first_line(e)} (set compile: false)") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> torch.device:
    """`--device` as a torch.device this machine has (default: cuda when available), else one line."""
    try:
        device = torch.device(name or default_device())
    except (RuntimeError, ValueError):
        raise DataError(f"--device {name}: not a device name (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DataError(f"--device {name}: unsupported device type {device.type!r} (cpu, cuda, cuda:N, mps)")
    return device


def sampling_config(loaded: Loaded, args: argparse.Namespace) -> SamplingConfig:
    """The flags as a SamplingConfig, after the modality's defaults and presets."""
    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop_tokens=(loaded.tokenizer.eos_id,),
    )
    return loaded.modality.configure_sampling(args, cfg)


def fit_prompts(modality: Modality, tok: Any, prompts: list[list[int]], context: int, max_new_tokens: int) -> list[list[int]]:
    """Cut prompts longer than the context to what fits with room to generate, saying so once per prompt."""
    room = max(1, min(max_new_tokens, context // 4))
    fitted: dict[tuple[int, ...], list[int]] = {}
    for p in prompts:
        if len(p) > context and tuple(p) not in fitted:
            kept, what = modality.fit_prompt(tok, list(p), context - room)
            print(f"arseq: the prompt is {len(p)} tokens, more than the model's context of {context}; "
                  f"kept {what} ({len(kept)} tokens)", file=sys.stderr)
            fitted[tuple(p)] = kept
    return [fitted.get(tuple(p), p) for p in prompts]


def sample(
    loaded: Loaded, args: argparse.Namespace, num_samples: int, batch_size: int, stream: bool = True,
    cfg: SamplingConfig | None = None, spec: drafting.Speculative | None = None,
) -> list[Sample]:
    """Generate `num_samples` samples with the modality's prompts, constraint and streamer (speculatively
    with --draft: `spec`, or one made from args)."""
    tok, modality, model = loaded.tokenizer, loaded.modality, loaded.model
    cfg = cfg if cfg is not None else sampling_config(loaded, args)
    spec = spec if spec is not None else drafting.from_args(loaded, args)  # --draft (arseq.drafting)
    prompts = fit_prompts(modality, tok, modality.prompts(tok, args, num_samples), model.cfg.max_seq_len, cfg.max_new_tokens)
    streamer = modality.streamer(tok, args) if stream else None
    out: list[Sample] = []
    batches = range(0, len(prompts), batch_size)
    if streamer is None and len(prompts) > 1:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generating", unit="batch", leave=False, disable=None)
    for b0 in batches:
        batch = prompts[b0 : b0 + batch_size]
        # Sample i is seeded with seed + i: the same samples at any --batch-size
        seeds = [cfg.seed + b0 + i for i in range(len(batch))] if cfg.seed is not None else None
        constraint = modality.constraint(tok, args)

        def on_token(step: int, tokens: torch.Tensor, finished: torch.Tensor) -> None:
            for row, t in enumerate(tokens.tolist()):
                if not finished[row] or t == tok.eos_id:
                    streamer(row, t)

        if spec is not None:  # --draft
            gen = spec.generate(loaded, batch, cfg, seeds, constraint, on_token if streamer else None)
        else:
            gen = generate(model, batch, cfg, pad_id=tok.pad_id, seeds=seeds, constraint=constraint, on_token=on_token if streamer else None,
                           compile=getattr(args, "compile", False))
        scored = [p + t + ([tok.eos_id] if s else []) for p, t, s in zip(batch, gen.tokens, gen.stopped)]
        nll, count = sequence_nll(model, scored, start=[len(p) for p in batch], pad_id=tok.pad_id)
        for p, t, s, n, c in zip(batch, gen.tokens, gen.stopped, nll, count):
            out.append(Sample(list(p), t, s, float(n / c) if c else float("nan")))
    if spec is not None:  # --draft
        print(spec.stats.line(), file=sys.stderr)
    return out


def held_out(loaded: Loaded, data_paths: list[str] | None) -> tuple[Prepared | None, list[np.ndarray], str]:
    """The training data (None when it is gone), the items to evaluate (--data.paths, else the validation
    split), and where they came from; all tokenized with the checkpoint's tokenizer."""
    modality, tok = loaded.modality, loaded.tokenizer
    options = loaded.meta["modality"].get("options", {})
    trained_on = DataConfig(**loaded.meta["data"])
    try:
        train_data: Prepared | None = prepare(modality, options, trained_on, tokenizer=tok)
    except DataError:
        train_data = None  # the training data is not here any more
    if data_paths:
        evaluated = prepare(modality, options, DataConfig(paths=data_paths, val_fraction=0, block_size=trained_on.block_size), tokenizer=tok).train
        where = ", ".join(data_paths)
    elif train_data is not None:
        evaluated, where = train_data.val, "validation split"
    else:
        raise DataError("the training data of this checkpoint is not available; pass --data.paths")
    items = evaluated.items()
    if not items:
        raise DataError(f"no held-out items to evaluate ({where}); pass --data.paths")
    return train_data, items, where


def modality_metrics(modality: Modality, tok: Any, sequences: list[list[int]], reference: Any) -> dict[str, Any]:
    """`Modality.metrics`, also for plugins written before it took the training items (`reference`)."""
    if "reference" in inspect.signature(modality.metrics).parameters:
        return modality.metrics(tok, sequences, reference=reference)
    return modality.metrics(tok, sequences)


def run_evaluate(loaded: Loaded, args: argparse.Namespace, data_paths: list[str] | None, batch_size: int) -> dict[str, Any]:
    """Loss on held-out data, the modality's extra figures, and (with --num-samples) sample metrics."""
    tok, modality, model = loaded.tokenizer, loaded.modality, loaded.model
    train_data, items, where = held_out(loaded, data_paths)
    t0 = time.perf_counter()
    context = model.cfg.max_seq_len
    stride = args.stride or max(1, context // 2)
    nll, count = sequence_nll(model, items, batch_size=batch_size, pad_id=tok.pad_id, stride=stride, progress=True)
    loss = float(nll.sum() / max(1, count.sum()))
    result: dict[str, Any] = {
        "data": where,
        "items": len(items),
        "predicted_tokens": int(count.sum()),
        "context": context,
        "stride": stride,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    train_items = train_data.train.items() if train_data is not None else items
    unigram, counted = unigram_baseline(train_items, items, tok.vocab_size, never_predicted=(tok.pad_id, tok.bos_id))
    result["baselines"] = {"unigram": {"loss": unigram, "perplexity": math.exp(unigram)}}
    result["perplexity_vs_unigram"] = math.exp(loss - unigram)
    result["unigram_counted_tokens"] = counted
    report = EvalInputs(loss, float(nll.sum()), int(count.sum()), nll, count, train_items, items)
    extra = modality.evaluate(tok, report)
    result.update({**extra, "baselines": {**result["baselines"], **extra.get("baselines", {})}})
    if args.num_samples > 0:
        cfg = sampling_config(loaded, args)
        result["sampling"] = {k: v for k, v in asdict(cfg).items() if k != "stop_tokens"}
        spec = drafting.from_args(loaded, args)  # --draft
        samples = sample(loaded, args, args.num_samples, batch_size, stream=False, cfg=cfg, spec=spec)
        if spec is not None:
            result["speculative"] = spec.report()
        result["sample_metrics"] = modality_metrics(modality, tok, [s.prompt + s.tokens for s in samples], train_items)
        n = min(len(items), max(args.num_samples, 100))  # a seeded sample of the held-out items, not the first n
        chosen = np.random.default_rng(0).choice(len(items), n, replace=False)
        result["data_metrics"] = modality_metrics(modality, tok, [np.asarray(items[i]).tolist() for i in sorted(chosen)], train_items)
        result["sample_perplexity"] = float(np.exp(np.nanmean([s.nll for s in samples])))
    return result


def run_sampling(verb: str, loaded: Loaded, args: argparse.Namespace) -> dict[str, Any]:
    """generate or evaluate with parsed options: checks them, prepares the model (device, dtype, int8,
    compile), then returns evaluate's report, or generate's {"samples", "written"} (files under args.out)."""
    from arseq.models.inference import prepare_for_inference

    if args.num_samples < (1 if verb == "generate" else 0) or args.batch_size < 1:
        raise DataError(f"--num-samples must be >= {1 if verb == 'generate' else 0} and --batch-size >= 1")
    if args.out is not None and Path(args.out).is_file() and not args.overwrite:
        raise DataError(f"{args.out}: already exists; pass --overwrite to replace it, or choose another --out")
    context = loaded.model.cfg.max_seq_len
    if verb == "evaluate" and args.stride is not None and not 0 < args.stride <= context:
        raise DataError(f"--stride must be between 1 and the model's context ({context}), got {args.stride}")
    prepare_for_inference(loaded.model, resolve_device(args.device), args.dtype, args.quantize, args.compile)
    if verb == "evaluate":
        return run_evaluate(loaded, args, args.data_paths, args.batch_size)
    samples = sample(loaded, args, args.num_samples, args.batch_size)
    out = Path(args.out) if args.out is not None else None
    return {"samples": samples, "written": loaded.modality.write(loaded.tokenizer, samples, out, args)}
