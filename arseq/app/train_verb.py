"""`arseq train`: a model from a YAML config (sections: modality, data, model, optim, trainer)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser

from arseq.app.config_verbs import parse_config
from arseq.models.transformer import TransformerConfig
from arseq.train.optim import OptimConfig
from arseq.train.run import run_train

log = logging.getLogger(__name__)
HELP = "train a model from a YAML config"


def add_options(parser: ArgumentParser) -> None:
    parser.add_class_arguments(TransformerConfig, "model", skip={"vocab_size", "max_seq_len"}, help="transformer size")
    parser.add_class_arguments(OptimConfig, "optim")
    parser.add_class_arguments(L.Trainer, "trainer", fail_untyped=False, help="any lightning.Trainer argument")
    parser.set_defaults({"trainer.default_root_dir": "runs"})
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this checkpoint (e.g. last.ckpt)")
    parser.add_argument(
        "--compile", type=bool, default=False, help="torch.compile the model for training: ~1.2x faster steps on CPU after ~20 s of compiling"
    )
    parser.add_argument(
        "--init-from",
        "--init_from",
        dest="init_from",
        type=str | None,
        default=None,
        help="start from these weights (arseq .ckpt/run folder/export, or a Hugging Face Llama folder) "
        "with a fresh optimizer and schedule; an arseq source's tokenizer is reused",
    )
    parser.add_argument(
        "--init-from-resize-vocab",
        "--init_from_resize_vocab",
        dest="init_from_resize_vocab",
        action="store_true",
        help="with --init-from: resize the embeddings to the tokenizer's vocabulary",
    )


def instantiate(value: Any) -> Any:
    """Objects from `class_path`/`init_args` specs (trainer.callbacks, trainer.logger, trainer.plugins), as
    LightningCLI builds them: the user's own config names these classes."""
    if isinstance(value, list):
        return [instantiate(v) for v in value]
    if isinstance(value, dict) and "class_path" in value:
        module, _, name = value["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)(**value.get("init_args", {}))
    return value


def run_train_verb(argv: list[str]) -> int:
    call = parse_config("train", HELP, argv, add_options, sections=("model", "optim", "trainer"))
    cfg = call.cfg
    trainer_args = {k: instantiate(v) for k, v in cfg.trainer.as_dict().items() if v is not None}
    trained = run_train(
        call.modality,
        call.options,
        call.data,
        cfg.model.as_dict(),
        cfg.optim.as_dict(),
        trainer_args,
        cfg.seed,
        cfg.ckpt_path,
        call.name,
        cfg.compile,
        cfg.init_from,
        cfg.init_from_resize_vocab,
    )
    if trained.main_process:
        print(trained.summary())  # the result of a run: stdout
        if trained.last is not None:  # what a new user does next (a note: stderr)
            log.info(f"sample from it: arseq generate --checkpoint {trained.run_dir} --num-samples 4 --out samples/{call.modality.name or 'out'}")
    return 0
