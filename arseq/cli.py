"""`arseq VERB ...`: parse arguments, call `arseq.workflows`, turn user errors into one line."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

from arseq.config_files import read_config
from arseq.errors import DataError, one_line

VERBS = {
    "train": "train a model from a YAML config",
    "prepare": "tokenize and cache a dataset; print its statistics as JSON",
    "generate": "sample from a checkpoint or export and write files",
    "evaluate": "held-out loss, perplexity and modality metrics as JSON",
    "export": "write config.json + model.safetensors + tokenizer.json",
    "modalities": "list the registered modalities",
    "score": "per-item NLL, perplexity and token count of given files (CSV; JSON on stdout)",
    "analyze": "do errors compound? 'arseq analyze drift': injected errors and free-running survival",
    "serve": "an HTTP server with continuous batching and a web page (needs 'arseq[serve]')",
    "revise": "improve finished pieces where they are weakest, with a fill-in-the-middle model",
}
EPILOG = "Run 'arseq VERB --help' for the options of a verb."


# ---- train / prepare: jsonargparse, YAML configs mirroring the code's signatures -----------------
def _modality_name(argv: Sequence[str]) -> str | None:
    """The modality a config selects, found before the full parser (whose options depend on it) exists."""
    name = None
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("--config="):
            arg, value = "--config", arg.split("=", 1)[1]
        if arg == "--config" and value:
            cfg = read_config(value)
            section = cfg.get("modality") if isinstance(cfg, dict) else None
            if isinstance(section, dict) and "name" in section:
                name = section["name"]
            elif isinstance(section, str):
                name = section
        elif arg.startswith("--modality.name"):
            name = arg.split("=", 1)[1] if "=" in arg else value
    return name


def config_parser(verb: str, modality_cls: type | None):
    from jsonargparse import ActionConfigFile, ArgumentParser

    from arseq.data.prepare import DataConfig
    from arseq.models.optim import OptimConfig
    from arseq.models.transformer import TransformerConfig

    parser = ArgumentParser(
        prog=f"arseq {verb}",
        description=VERBS[verb] + ". Every key of the YAML config can be overridden as --section.key VALUE.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s); later ones and flags override")
    parser.add_argument("--seed", type=int, default=1337, help="seed for weights, sampling of windows and dropout")
    parser.add_argument("--modality.name", type=str, required=True, help="registered modality name or package.module:Class")
    if modality_cls is not None:
        parser.add_class_arguments(modality_cls, "modality", help="options of the modality")
    parser.add_class_arguments(DataConfig, "data")
    if verb == "train":
        import lightning as L

        parser.add_class_arguments(TransformerConfig, "model", skip={"vocab_size", "max_seq_len"}, help="transformer size")
        parser.add_class_arguments(OptimConfig, "optim")
        parser.add_class_arguments(L.Trainer, "trainer", fail_untyped=False, help="any lightning.Trainer argument")
        parser.set_defaults({"trainer.default_root_dir": "runs"})
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume from this checkpoint (e.g. last.ckpt)")
        parser.add_argument("--compile", type=bool, default=False,
                            help="torch.compile the model for training: ~1.2x faster steps on CPU after ~20 s of compiling")
        parser.add_argument("--init-from", "--init_from", dest="init_from", type=str | None, default=None,
                            help="start from these weights (arseq .ckpt/run folder/export, or a Hugging Face Llama folder) "
                            "with a fresh optimizer and schedule; an arseq source's tokenizer is reused")
        parser.add_argument("--init-from-resize-vocab", "--init_from_resize_vocab", dest="init_from_resize_vocab",
                            action="store_true", help="with --init-from: resize the embeddings to the tokenizer's vocabulary")
    else:  # the training sections of a train config are accepted unchecked (and Lightning stays unimported)
        for section in ("model", "optim", "trainer"):
            parser.add_argument(f"--{section}", type=dict | None, default=None, help=f"ignored by {verb}")
        for key in ("ckpt_path", "init_from", "init_from_resize_vocab"):
            parser.add_argument(f"--{key}", type=str | bool | None, default=None, help=f"ignored by {verb}")
        parser.add_argument("--check-roundtrip", "--check_roundtrip", dest="check_roundtrip", action="store_true",
                            help="also report the fraction of items that decode(encode(x)) reproduces exactly")
    return parser


def _instantiate(value: Any) -> Any:
    """Objects from `class_path`/`init_args` specs (trainer.callbacks, trainer.logger, trainer.plugins)."""
    if isinstance(value, list):
        return [_instantiate(v) for v in value]
    if isinstance(value, dict) and "class_path" in value:
        import importlib

        module, _, name = value["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)(**value.get("init_args", {}))
    return value


def run_config_verb(verb: str, argv: list[str]) -> int:
    from arseq.modalities import resolve

    name = _modality_name(argv)
    if name is None and not {"-h", "--help", "--print_config"} & set(argv):
        raise DataError("no modality: set modality.name in the config (or --modality.name)")
    modality_cls = resolve(name) if name else None
    parser = config_parser(verb, modality_cls)
    try:
        cfg = parser.parse_args(argv)
    except Exception as e:  # jsonargparse's ArgumentError: make it one line
        raise DataError(one_line(e)) from None
    sections = ("modality", "data") + (("model", "optim", "trainer") if verb == "train" else ())
    for section in sections:
        if not hasattr(cfg.get(section), "as_dict"):
            raise DataError(f"config section {section!r} must be a mapping of keys to values, got {cfg.get(section)!r}")
    options = {k: v for k, v in cfg.modality.as_dict().items() if k != "name"}
    from arseq import workflows
    from arseq.data.prepare import DataConfig

    modality = modality_cls(**options)
    data = DataConfig(**cfg.data.as_dict())
    if verb == "prepare":
        print(json.dumps(workflows.run_prepare(modality, options, data, cfg.check_roundtrip), indent=1))
        return 0
    trainer_args = {k: _instantiate(v) for k, v in cfg.trainer.as_dict().items() if v is not None}
    workflows.run_train(modality, options, data, cfg.model.as_dict(), cfg.optim.as_dict(), trainer_args, cfg.seed, cfg.ckpt_path, name, cfg.compile,
                        cfg.init_from, cfg.init_from_resize_vocab)
    return 0


# ---- generate / evaluate / export: flags, with modality-specific ones added once the checkpoint is known
def _add_trust_arguments(p: argparse.ArgumentParser) -> None:
    """A file names its modality; only registered ones are used unless the user chooses otherwise here."""
    p.add_argument("--modality", default=None, metavar="NAME_OR_IMPORT_PATH",
                   help="use this modality (registered name or package.module:Class) instead of the one the file names")
    p.add_argument("--trust-modality-import", action="store_true",
                   help="allow the import path of a modality stored in the file (imports that module: trust the file first)")


def run_sampling_verb(verb: str, argv: list[str]) -> int:
    from arseq import checkpoint, generation, limits, options
    from arseq.outputs import claimed, to_json

    pre = options.early(argv)
    if not pre.get("checkpoint"):
        if pre["help"]:
            options.parser(verb, None).print_help()
            print("\nWith --checkpoint, --help also lists the options of the checkpoint's modality.")
            return 0
        raise DataError(f"arseq {verb}: --checkpoint is required")
    loaded = checkpoint.load(pre["checkpoint"], pre.get("modality"), bool(pre.get("trust_modality_import")))
    generation.check_hooks(loaded.modality)
    opts = loaded.modality.generate_options
    parser = options.parser(verb, opts)
    if pre["help"]:
        parser.print_help()
        return 0
    call = options.to_call(options.parse(parser, argv, options.kinds(opts)), opts)
    limits.check_call(loaded, call, verb)
    if verb == "evaluate":
        with checkpoint.stored_data(loaded, call.data_paths):
            result = generation.run_evaluate(loaded, call.request, call.run, call.data_paths, call.stride)
        print(to_json(result, indent=1))  # NaN (e.g. no token to predict) is null: the output stays JSON
        return 0
    with claimed(call.request.out):  # a second run into this --out refuses instead of replacing our files
        _, written = generation.run_generate(loaded, call.request, call.run)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run_export(argv: list[str]) -> int:
    from arseq import checkpoint

    p = argparse.ArgumentParser(prog="arseq export", description=VERBS["export"] + ": a self-contained model folder "
                                "that 'arseq generate' and 'arseq evaluate' accept like a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a .ckpt from 'arseq train'")
    p.add_argument("--out", required=True, type=Path, help="a new (or empty) folder")
    p.add_argument("--format", choices=("arseq", "hf"), default="arseq",
                   help="hf: a Hugging Face LlamaForCausalLM folder (needs transformers) that arseq reads too")
    p.add_argument("--quantize", default="none", metavar="{none,int8}", help="int8: int8 weights and per-channel scales, ~4x smaller")
    _add_trust_arguments(p)
    args = p.parse_args(argv)
    loaded = checkpoint.load(args.checkpoint, args.modality, args.trust_modality_import)
    out = checkpoint.export(loaded, args.out, args.format, args.quantize)
    print(f"exported to {out}")
    return 0


def run_modalities(argv: list[str]) -> int:
    from arseq.modalities import PluginWarning, loadable

    argparse.ArgumentParser(prog="arseq modalities", description=VERBS["modalities"] + ": name, package, version, class.").parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)  # only ours: library import warnings keep their filters
        entries = loadable()
    for entry, _ in entries:
        print(f"{entry.name}\t{entry.package} {entry.version}\t{entry.target}")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is: the cleanup of writes in progress runs (temporary files, claims,
    prepare's entry folder) as for Ctrl-C, where the default action left hundreds of hidden temp files."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        width = max(map(len, VERBS))
        lines = "\n".join(f"  {v:<{width}}  {h}" for v, h in VERBS.items())
        print(f"usage: arseq VERB [options]\n\nTrain and sample autoregressive transformers on text, music, images "
              f"and proteins.\n\nverbs:\n{lines}\n\n{EPILOG}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\narseq: error: unknown verb {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    verb, rest = argv[0], argv[1:]
    previous = None
    if verb not in ("train", "serve") and threading.current_thread() is threading.main_thread():  # they have their own
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if verb in ("train", "prepare"):
            return run_config_verb(verb, rest)
        if verb in ("generate", "evaluate"):
            return run_sampling_verb(verb, rest)
        if verb in ("score", "analyze"):
            from arseq.analysis import commands

            return commands.run_score(rest) if verb == "score" else commands.run_analyze(rest)
        if verb == "revise":
            from arseq.analysis.revise_command import run_revise

            return run_revise(rest)
        if verb == "serve":
            from arseq.serve.command import run_serve

            return run_serve(rest)
        return run_export(rest) if verb == "export" else run_modalities(rest)
    except (DataError, ValueError, OSError, RecursionError) as e:  # OSError: full disk, name too long, not a folder...
        if os.environ.get("ARSEQ_DEBUG"):
            raise
        print(f"arseq {verb}: error: {one_line(e, limit=1000)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeError (OutOfMemoryError on CUDA)
        if os.environ.get("ARSEQ_DEBUG") or not (isinstance(e, MemoryError) or "allocate" in str(e) or "out of memory" in str(e)):
            raise
        print(f"arseq {verb}: error: out of memory (a size from a file or a flag is larger than this machine can hold)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(f"arseq {verb}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
