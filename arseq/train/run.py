"""Training as a plain function: the modality's data cache, the transformer in its LightningModule, and
Lightning's Trainer with arseq's checkpointing (atomic, a claimed run folder, best and last checkpoints)."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from arseq.artifacts.checkpoint import load_checkpoint_file
from arseq.artifacts.init_from import InitSource, initialise, read_source
from arseq.artifacts.metadata import RunMeta
from arseq.data.config import DataConfig
from arseq.data.fim import for_training
from arseq.data.loader import train_loader, val_loader
from arseq.data.prepare import Prepared, prepare
from arseq.errors import Interrupted, first_line, one_line
from arseq.limits import check_model, check_training
from arseq.modalities import DataError, Modality
from arseq.models.transformer import TransformerConfig
from arseq.outputs import printable_name
from arseq.tokenizers.base import Tokenizer
from arseq.train.checkpoint_io import AtomicCheckpointIO, clean_checkpoint_folder
from arseq.train.module import ARModule, LastCheckpoint
from arseq.train.optim import OptimConfig
from arseq.train.progress import progress_bar

log = logging.getLogger(__name__)
# Lines Lightning logs at every start: advertisements of its cloud services, and a TPU this machine lacks.
LIGHTNING_NOISE = ("\U0001f4a1 Tip:", "TPU available: False")


@dataclass(frozen=True)
class Trained:
    """Where a training run wrote its checkpoints."""

    run_dir: Path
    last: Path | None  # last.ckpt: the newest state, to resume from
    best: Path | None  # the best validation loss (None without validation)
    main_process: bool  # False on the other ranks of a multi-process run

    def summary(self) -> str:
        return f"run directory: {self.run_dir}\n  last checkpoint: {self.last or '-'}\n  best checkpoint: {self.best or '-'}"


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
) -> Trained:
    """Train a model; return where it wrote its checkpoints (under the run directory's `checkpoints/`).

    `selector` is how the config named the modality (a registered name or an import path); it is
    stored in checkpoints so that loading finds an unregistered modality class too. `init_from` starts
    from existing weights (see arseq.artifacts.init_from); `ckpt_path` resumes a run. The parameters
    mirror the config's sections (jsonargparse reads the config against this signature).
    """
    check_settings(data, model, optim, trainer_args)
    L.seed_everything(seed, verbose=False)
    start = starting_point(modality, model, data.block_size, ckpt_path, init_from)
    prepared = prepare(modality, options, data, tokenizer=start.tokenizer)
    fim, fim_windows = for_training(data.fim_rate, data.fim_ordering, prepared, modality)  # None, None at rate 0
    model_cfg = TransformerConfig(vocab_size=prepared.vocab_size + (fim.size if fim else 0), max_seq_len=data.block_size, **model)
    if start.resumed is not None:
        check_resumable(start.resumed, model_cfg, ckpt_path, trainer_args["max_steps"])
    meta = RunMeta(
        selector or modality.name,
        options,
        asdict(data),
        asdict(model_cfg),
        prepared.controls.to_dict() if prepared.controls is not None else None,
        fim.to_dict() if fim is not None else None,
        prepared.stats.get("item_tokens"),  # absent from caches made before it was recorded
    )
    module = ARModule(asdict(model_cfg), optim, {**meta.to_dict(), "tokenizer": prepared.tokenizer.to_dict()}, compile)
    init_note = initialise(module.model, start.source, init_from_resize_vocab) if start.source else None
    augment = None if type(modality).augment is Modality.augment else partial(modality.augment, controls=prepared.controls)
    train = train_loader(
        prepared.directory / "train.npy", data.block_size, data.batch_size, seed, augment, data.num_workers, prepared.controls, fim_windows
    )
    val = val_loader(prepared.val, data.block_size, data.batch_size, prepared.tokenizer.pad_id, prepared.controls.head if prepared.controls else 0)
    run = RunFolder.claim(modality.name, trainer_args, validated=val is not None)
    try:
        trainer = make_trainer(default_root_dir=run.root, callbacks=run.callbacks, **trainer_args)
        if compile:
            check_compile(trainer.strategy.root_device)
        if trainer.is_global_zero:
            log.info(describe(module, prepared, data.block_size))
            if init_note:
                log.info(init_note)
            if skipped := skipped_note(prepared.stats):
                log.warning(skipped)
        fit(trainer, module, train, val, ckpt_path, run)
    except BaseException:
        remove_if_empty(run.folder)  # a run that failed before writing anything leaves no empty version_N
        raise
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Join gloo/NCCL's threads now: left to static destructors at exit, they abort the process (rc -6)
        torch.distributed.destroy_process_group()
    return run.trained(trainer)


def fit(trainer: L.Trainer, module: ARModule, train: Any, val: Any, ckpt_path: str | None, run: RunFolder) -> None:
    """trainer.fit, where Ctrl-C and SIGTERM end as Interrupted saying where to resume: Lightning ends them with
    SystemExit (1 for Ctrl-C, 0 for SIGTERM: a stopped run looked finished), after LastCheckpoint saved the state."""
    try:
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
    except (KeyboardInterrupt, SystemExit) as e:
        if not trainer.interrupted:
            raise
        last = run.saved_last()
        kept = f"; resume with --ckpt_path {last}" if last else " before its first checkpoint"
        raise Interrupted(f"stopped at step {trainer.global_step}{kept}", terminated=isinstance(e, SIGTERMException)) from None


def check_settings(data: DataConfig, model: dict[str, Any], optim: dict[str, Any], trainer_args: dict[str, Any]) -> None:
    """The config's mistakes as one line each, before any data is read."""
    if trainer_args.get("max_steps") in (None, -1):
        raise DataError("set trainer.max_steps: training runs for a number of steps, not epochs")
    if not isinstance(trainer_args["max_steps"], int) or trainer_args["max_steps"] < 1:
        raise DataError(f"trainer.max_steps must be a positive integer, got {trainer_args['max_steps']!r}")
    probe = TransformerConfig(vocab_size=1, max_seq_len=data.block_size, **model)
    names = {"max_seq_len": "data.block_size", "batch_size": "data.batch_size"}
    check_model(asdict(probe), "config", batch=data.batch_size, names=names)
    check_trainer_args(trainer_args)
    if str(trainer_args.get("accelerator", "auto")).lower() == "cpu" or not torch.cuda.is_available():
        check_training(asdict(probe), data.batch_size, "config", names)  # a GPU's memory is the GPU's: Lightning says
    OptimConfig(**optim)


@dataclass(frozen=True)
class Start:
    """What a run starts from besides the config: a resumed checkpoint's state, or an `--init-from` source."""

    tokenizer: Tokenizer | None = None  # the one to keep (None: fit one on the data)
    resumed: dict[str, Any] | None = None  # the checkpoint being resumed (its `arseq` entry holds the run's metadata)
    source: InitSource | None = None  # an --init-from source


def starting_point(modality: Modality, model: dict[str, Any], block_size: int, ckpt_path: str | None, init_from: str | None) -> Start:
    """Resume with the checkpoint's tokenizer, never a refitted one; fine-tune with the source's tokenizer
    (an arseq source's), so that token ids keep their meaning."""
    if ckpt_path and init_from:
        raise DataError("--init-from starts a new run from weights, --ckpt_path resumes a run: give one of them")
    if ckpt_path:
        state = load_checkpoint_file(Path(ckpt_path))
        clean_checkpoint_folder(Path(ckpt_path).parent)  # what a kill of that run left behind
        return Start(modality.load_tokenizer(state["arseq"]["tokenizer"]), state)
    if init_from:
        source = read_source(init_from, modality, model, block_size)
        return Start(source.tokenizer, None, source)
    return Start()


def check_resumable(state: dict[str, Any], model_cfg: TransformerConfig, ckpt_path: str | None, max_steps: int) -> None:
    """A checkpoint resumes only with the model it was trained with, and only with steps left to train."""
    theirs = state["arseq"].get("model", {})
    differ = [f"{k} {theirs.get(k)} vs {v}" for k, v in asdict(model_cfg).items() if k in theirs and theirs[k] != v]
    if differ:
        raise DataError(
            f"--ckpt_path {ckpt_path}: its model differs from the config's ({', '.join(differ)}); resume with the config it was trained with"
        )
    done = state.get("global_step", 0)
    if isinstance(done, int) and done >= max_steps:  # Lightning would do nothing, in a new run folder
        raise DataError(
            f"--ckpt_path {ckpt_path}: already trained for {done} steps, trainer.max_steps is {max_steps}; raise trainer.max_steps to train on"
        )


def describe(module: ARModule, prepared: Prepared, block_size: int) -> str:
    conditioned = f" (conditioned on {', '.join(prepared.controls.fields)})" if prepared.controls else ""
    return (
        f"model: {module.model.num_params() / 1e6:.2f}M parameters, vocab {prepared.vocab_size}{conditioned}, context {block_size}; "
        f"data: {prepared.train.num_tokens:,} train / {prepared.val.num_tokens:,} val tokens"
    )


def skipped_note(stats: dict[str, Any]) -> str | None:
    """The data items the modality could not read, named (a run that quietly trains on part of its data surprises)."""
    skipped = stats.get("skipped") or []
    if not skipped:
        return None
    names = "; ".join(f"{_shown(s['file'])}: {s['reason']}" for s in skipped[:3])
    more = f"; and {len(skipped) - 3} more ('arseq prepare' lists them all)" if len(skipped) > 3 else ""
    return f"skipped {len(skipped)} of {stats['num_items'] + len(skipped)} items in data.paths: {names}{more}"


def _shown(file: str) -> str:
    """A path as stored (absolute), shown relative to the working folder when it lies inside it."""
    relative = os.path.relpath(file) if os.path.isabs(file) else file
    return printable_name(file if relative.startswith("..") else relative)


@dataclass
class RunFolder:
    """The run's claimed `version_N` folder, and the loggers, checkpoint callbacks and plugins that write into it."""

    folder: Path
    root: str  # the Trainer's default_root_dir
    callbacks: list[Any]
    best: ModelCheckpoint | None
    last: LastCheckpoint

    @classmethod
    def claim(cls, name: str, trainer_args: dict[str, Any], validated: bool) -> RunFolder:
        """Claim the folder and set up `trainer_args` (loggers, plugins) to write into it; pops what it takes."""
        root = trainer_args.pop("default_root_dir", None) or "runs"
        folder, version = claim_run_folder(Path(root) / name)  # no other run writes its checkpoints here
        loggers: list[Any] = [CSVLogger(root, name=name, version=version)]
        if find_spec("tensorboard") or find_spec("tensorboardX"):
            loggers.append(TensorBoardLogger(root, name=name, version=version, default_hp_metric=False))
        trainer_args.setdefault("logger", loggers)
        logged = trainer_args["logger"] not in (False, None, [])
        last = LastCheckpoint(every_n_steps=None if validated else max(1, trainer_args["max_steps"] // 10))  # no validation: save ten times
        best = (
            ModelCheckpoint(
                monitor="val/loss", mode="min", save_top_k=1, filename="best-step{step}-loss{val/loss:.4f}", auto_insert_metric_name=False
            )
            if validated
            else None
        )
        monitor = [LearningRateMonitor(logging_interval="step")] if logged else []
        given = list(trainer_args.pop("callbacks", None) or [])
        callbacks = [c for c in (best, last) if c] + monitor + progress_bar(trainer_args, given) + given
        plugins = list(trainer_args.pop("plugins", None) or [])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())  # a kill never leaves a broken last.ckpt
        trainer_args["plugins"] = plugins
        return cls(folder, root if logged else str(folder), callbacks, best, last)  # no logger: checkpoints go to the claimed folder

    def trained(self, trainer: Any) -> Trained:
        best = Path(self.best.best_model_path) if self.best is not None and self.best.best_model_path else None
        return Trained(Path(trainer.log_dir or self.root), self.saved_last(), best, trainer.is_global_zero)

    def saved_last(self) -> Path | None:
        """last.ckpt, where one has been written."""
        return self.last.path if self.last.path is not None and self.last.path.exists() else None


def claim_run_folder(parent: Path) -> tuple[Path, int]:
    """The next free `version_N` under `parent`, created here (mkdir is exclusive): two runs started into one
    root, or a run without a logger, never share (and never replace each other's) checkpoints."""
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[8:]) for p in parent.glob("version_*") if p.name[8:].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{version}").mkdir()
            return parent / f"version_{version}", version
        except FileExistsError:
            version += 1


def remove_if_empty(folder: Path) -> None:
    """Remove `folder` and its subfolders if no file was written in them (a failed run's claimed folder)."""
    if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            sub.rmdir()
        folder.rmdir()


def check_trainer_args(args: dict[str, Any]) -> None:
    """Trainer settings Lightning would take and then fail on mid-run (or with a traceback): one line first."""
    accumulate = args.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise DataError(f"trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
    accelerator = str(args.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise DataError(f"trainer.accelerator {accelerator}: no CUDA GPU on this machine (use cpu or auto)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise DataError("trainer.accelerator mps: MPS is not available on this machine (use cpu or auto)")


def make_trainer(**kwargs: Any) -> Any:
    """lightning.Trainer, its configuration errors (MisconfigurationException, ValueError) as one line. Without
    Lightning's model table (arseq logs the model in one line; the table added "Total FLOPs: 0") unless asked,
    and without the lines Lightning logs at every start that tell an arseq user nothing (`quiet`)."""
    if kwargs.get("enable_model_summary") is None:
        kwargs["enable_model_summary"] = False
    quiet()
    try:
        return L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as e:
        raise DataError(f"trainer: {one_line(e, limit=300)}") from None


class _Unsaid(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_NOISE)


def quiet() -> None:
    """Drop LIGHTNING_NOISE from Lightning's log, torch 2.13's deprecation warning of Lightning's own pytree code, and
    EMA's warning about sharding (a user can do nothing about any)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _Unsaid) for f in rank_zero.filters):
        rank_zero.addFilter(_Unsaid())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")  # a repeat replaces the first
    # ARModule.configure_model only compiles (no sharding), so the memory this warns of is not at stake
    warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model that overrides")


def check_compile(device: torch.device) -> None:
    """Fail in one line before training if torch.compile cannot build kernels here (e.g. no C++ compiler)."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.zeros(4, device=device))
    except Exception as e:
        raise DataError(f"compile: true, but torch.compile does not work on {device}: {first_line(e)} (set compile: false)") from None
