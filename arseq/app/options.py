"""The options of generate, evaluate and analyze drift: one jsonargparse parser built from the typed
dataclasses (SamplingOptions, RunOptions, the modality's `generate_options`), so flags, `--help`, YAML
(`--config gen.yaml`, `--print_config`) and the Python API (`parse_object`) check the same types.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from jsonargparse import ActionConfigFile, ArgumentParser

from arseq.app.argv import config_files, flag_values
from arseq.app.parse_errors import parse_error
from arseq.app.run_options import RunOptions
from arseq.config_files import read_config
from arseq.errors import DataError
from arseq.modalities import Request, SamplingOptions

HELP = {
    "generate": "sample from a checkpoint or export and write files",
    "evaluate": "held-out loss, perplexity and modality metrics as JSON",
}
# Chosen by loading the model, before the full parser (whose options depend on its modality) exists.
LOAD_KEYS = ("checkpoint", "modality", "trust_modality_import")
# The Python API's names where they differ from the options' (`generate(n=4)` is --num-samples 4).
PYTHON_NAMES = {"generate": {"num_samples": "n"}}

# How the command line spells the flags every model-loading verb shares (see `normalize`): a bare
# --trust-modality-import is true, a bare --compile is on.
SHARED_KINDS = {"trust_modality_import": "bool", "compile": "optional"}


@dataclass
class Call:
    """A parsed generate/evaluate call."""

    request: Request
    run: RunOptions
    data_paths: list[str] | None = None  # evaluate: score these files instead of the validation split
    stride: int | None = None


def field_kinds(classes: Sequence[type]) -> dict[str, str]:
    """'bool' or 'list' for the fields the command line spells as bare flags or space-separated values."""
    kinds = {}
    for cls in classes:
        for name, hint in typing.get_type_hints(cls).items():
            args = set(typing.get_args(hint)) - {type(None)} or {hint}
            if args == {bool}:
                kinds[name] = "bool"
            elif any(typing.get_origin(a) is list for a in args):
                kinds[name] = "list"
    return kinds


def normalize(argv: Sequence[str], kinds: dict[str, str]) -> list[str]:
    """argparse's conventions on jsonargparse flags: `--top-k` for `--top_k`, a bare `--overwrite` for
    `--overwrite true`, `--no-divergence` for `--divergence false`, `--data.paths a b` for a list."""
    out: list[str] = []
    lists: dict[str, list[str]] = {}  # a list flag given twice (--cond a=1 --cond b=2) collects both
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name.startswith("no_") and kinds.get(name[3:]) == "bool" and not eq:
            out += [f"--{name[3:]}", "false"]
            continue
        kind = kinds.get(name)
        if eq:
            out.append(f"--{name}={value}")
        elif kind == "bool" and (i == len(argv) or argv[i].lower() not in ("true", "false")):
            if i < len(argv) and not argv[i].startswith("-"):  # no verb takes a bare value: it was meant for this flag
                raise DataError(f"--{name.replace('_', '-')}: expected true or false (or nothing: true), got {argv[i]!r}")
            out += [f"--{name}", "true"]
        elif kind == "optional" and (i == len(argv) or argv[i].startswith("--")):  # --compile alone: on
            out += [f"--{name}", "true"]
        elif kind == "list":
            values = []
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            if len(values) == 1 and values[0].startswith("["):
                out += [f"--{name}", values[0]]
            else:
                lists.setdefault(name, []).extend(values)
        else:
            out.append(f"--{name}")
    return out + [arg for name, values in lists.items() for arg in (f"--{name}", json.dumps(values))]


def early(argv: Sequence[str]) -> dict[str, Any]:
    """LOAD_KEYS and --help from the flags, or from the YAML files of --config (flags win)."""
    found: dict[str, Any] = {"help": any(a in ("-h", "--help") for a in argv)}
    args = normalize(argv, SHARED_KINDS)
    for path in config_files(args):
        cfg = read_config(path)
        if not isinstance(cfg, dict):
            raise DataError(f"{path}: a config must be a mapping of option names to values")
        found.update({k: cfg[k] for k in LOAD_KEYS if k in cfg})
    for key in LOAD_KEYS:
        if given := flag_values(args, f"--{key}"):
            found[key] = given[-1].lower() == "true" if key == "trust_modality_import" else given[-1]
    return found


def verb_parser(prog: str, description: str, several: bool = False) -> ArgumentParser:
    """A verb's parser with what every verb that loads a model takes: --config, --checkpoint and how to trust it.
    `several`: a config may list several checkpoints (a server's models)."""
    p = ArgumentParser(
        prog=prog,
        exit_on_error=False,
        description=description + ". Flags take - or _ (--top-k, --top_k); the same options, as YAML keys, from --config FILE.",
    )
    p.add_argument("--config", action=ActionConfigFile, help="YAML file of these options (e.g. temperature: 0.8); flags override it")
    p.add_argument(
        "--checkpoint",
        type=(str | list[str] | None) if several else (str | None),
        default=None,
        help="a .ckpt, a run folder of 'arseq train' (its best checkpoint), or a folder from 'arseq export'"
        + ("; several: NAME=PATH, the flag repeated or a list in --config" if several else ""),
    )
    p.add_argument(
        "--modality",
        type=str | None,
        default=None,
        help="use this modality (registered name or package.module:Class) instead of the one the file names",
    )
    p.add_argument(
        "--trust_modality_import",
        type=bool,
        default=False,
        help="allow the import path of a modality stored in the file (imports that module: trust the file first)",
    )
    return p


def parse_verb(p: ArgumentParser, argv: Sequence[str], classes: Sequence[type], **kinds_: str) -> Any:
    """Parse a verb's flags (argparse's spellings accepted, see `normalize`); --checkpoint is required."""
    cfg = parse(p, argv, {**field_kinds(classes), **SHARED_KINDS, **kinds_})
    if not cfg.checkpoint:
        raise DataError("--checkpoint is required")
    return cfg


def parser(verb: str, generate_options: type | None, prog: str | None = None, num_samples: int | None = None) -> ArgumentParser:
    """The parser of `verb` (generate, evaluate, or drift: evaluate's without --stride and --draft)."""
    p = verb_parser(prog or f"arseq {verb}", HELP.get(verb, ""))
    p.add_argument(
        "--prompt",
        type=str | None,
        default=None,
        help="what to continue: text for text models, a file for music and images, a motif or FASTA for proteins",
    )
    p.add_argument("--num_samples", type=int, default=num_samples if num_samples is not None else int(verb == "generate"), help="how many samples")
    p.add_argument(
        "--cond", type=list[str], default=[], help="FIELD=VALUE for a conditioned model (repeat for several fields): e.g. --cond tag=Cell.membrane-M"
    )
    p.add_class_arguments(SamplingOptions, None, as_group=True)
    # drift scores with the model itself: a draft model would change nothing it measures
    p.add_class_arguments(RunOptions, None, as_group=True, skip={"draft", "draft_tokens", "ngram"} if verb == "drift" else None)
    if verb == "generate":
        p.add_argument("--out", type=Path | None, default=None, help="output file or folder (default: print)")
        p.add_argument("--overwrite", type=bool, default=False, help="replace files that --out would write and that exist already")
    else:
        p.add_argument(
            "--data.paths",
            type=list[str] | None,
            default=None,
            help="evaluate on these files instead of the validation split the model was trained with",
        )
    if verb == "evaluate":
        p.add_argument(
            "--stride",
            type=int | None,
            default=None,
            help="items longer than the context are scored in windows advancing by this many tokens, "
            "each token once (default: half the context; the context itself is cheapest)",
        )
    if generate_options is not None:
        taken = {f.name for cls in (SamplingOptions, RunOptions) for f in fields(cls)} | {"prompt", "num_samples", "out", "overwrite"}
        clash = sorted(taken & {f.name for f in fields(generate_options)})
        if clash:
            raise DataError(f"{generate_options.__qualname__}: option(s) {', '.join(clash)} are the core's; rename them")
        p.add_class_arguments(generate_options, None, as_group=True)
    return p


def kinds(generate_options: type | None) -> dict[str, str]:
    classes = [SamplingOptions, RunOptions] + ([generate_options] if generate_options else [])
    return {**field_kinds(classes), **SHARED_KINDS, "overwrite": "bool", "data.paths": "list", "cond": "list"}


def parse(p: Any, argv: Sequence[str], kinds_: dict[str, str]) -> Any:
    args = normalize(argv, kinds_)
    try:
        return p.parse_args(args)
    except Exception as e:  # jsonargparse's ArgumentError
        raise parse_error(e, argv=args) from None


def to_call(cfg: Any, generate_options: type | None) -> Call:
    """Typed options from a parsed config."""
    d = cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
    pick = lambda cls: cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})  # noqa: E731
    request = Request(
        num_samples=d["num_samples"],
        prompt=d["prompt"],
        sampling=pick(SamplingOptions),
        conditions=list(d.get("cond") or []),
        options=pick(generate_options) if generate_options is not None else None,
        out=Path(d["out"]) if d.get("out") is not None else None,
        overwrite=bool(d.get("overwrite", False)),
    )
    return Call(request, pick(RunOptions), (d.get("data") or {}).get("paths"), d.get("stride"))


def from_python(verb: str, generate_options: type | None, options: dict[str, Any]) -> Call:
    """The Python API's keyword arguments (by their Python names), checked by the command line's parser."""
    p = parser(verb, generate_options)
    known = set(defaults(verb, generate_options))
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(unknown)} for {verb}; known: {', '.join(sorted(known))}")
    flag_names = {python: name for name, python in PYTHON_NAMES.get(verb, {}).items()}
    values = {flag_names.get(k, k): v for k, v in options.items() if k != "data_paths"}
    if isinstance(values.get("cond"), dict):  # cond={"tag": "Nucleus-U"} as well as cond=["tag=Nucleus-U"]
        values["cond"] = [f"{k}={v}" for k, v in values["cond"].items()]
    if "data_paths" in options:
        values["data"] = {"paths": options["data_paths"]}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    try:
        cfg = p.parse_object(values, defaults=True)
    except Exception as e:
        raise parse_error(e, flags=False) from None
    return to_call(cfg, generate_options)


def defaults(verb: str, generate_options: type | None) -> dict[str, Any]:
    """Every option the Python API takes for `verb` (by its Python name), with its default."""
    d = parser(verb, generate_options).get_defaults().as_dict()
    renamed = PYTHON_NAMES.get(verb, {})
    out = {renamed.get(k, k): v for k, v in d.items() if k not in ("config", "data", *LOAD_KEYS)}
    if verb != "generate":
        out["data_paths"] = None
    return out
