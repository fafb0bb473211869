"""What `arseq train` and `arseq prepare` share: a YAML config whose sections mirror the code's signatures (the
modality's options, DataConfig, and for train TransformerConfig, OptimConfig, lightning.Trainer), one jsonargparse
parser, and the modality it selects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from arseq.app.argv import config_files, flag_values
from arseq.app.parse_errors import parse_error
from arseq.app.shipped_configs import with_shipped
from arseq.config_files import read_config
from arseq.data.config import DataConfig
from arseq.errors import DataError
from arseq.modalities import Modality, resolve


def _modality_name(argv: Sequence[str]) -> str | None:
    """The modality a config selects, found before the full parser (whose options depend on it) exists."""
    name = None
    for path in config_files(argv):
        cfg = read_config(path)
        section = cfg.get("modality") if isinstance(cfg, dict) else None
        if isinstance(section, dict) and "name" in section:
            name = section["name"]
        elif isinstance(section, str):
            name = section
    flags = flag_values(argv, "--modality.name")
    return flags[-1] if flags else name


def config_parser(verb: str, help: str, modality_cls: type | None) -> ArgumentParser:
    """The sections every config verb takes; the verb adds its own."""
    parser = ArgumentParser(
        prog=f"arseq {verb}", exit_on_error=False, description=help + ". Every key of the YAML config can be overridden as --section.key VALUE."
    )
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="YAML config file(s), or a shipped config's name (music/bach_chorales: see 'arseq configs'); later ones and flags override",
    )
    parser.add_argument("--seed", type=int, default=1337, help="seed for weights, sampling of windows and dropout")
    parser.add_argument("--modality.name", type=str, required=True, help="registered modality name or package.module:Class")
    if modality_cls is not None:
        parser.add_class_arguments(modality_cls, "modality", help="options of the modality")
    parser.add_class_arguments(DataConfig, "data")
    return parser


@dataclass
class ConfigCall:
    """A parsed config: the modality built from its section, the data config, the rest as jsonargparse gave it."""

    name: str
    modality: Modality
    options: dict[str, Any]  # the modality's section as given (stored in checkpoints to rebuild it)
    data: DataConfig
    cfg: Namespace


def parse_config(verb: str, help: str, argv: list[str], add: Callable[[ArgumentParser], None], sections: Sequence[str] = ()) -> ConfigCall:
    """Parse `argv` for `verb` (--help and --print_config print and exit); `add` adds the verb's options."""
    argv = with_shipped(argv)
    name = _modality_name(argv)
    if name is None and not {"-h", "--help", "--print_config"} & set(argv):
        if not config_files(argv):
            raise DataError("--config is required: a YAML file or a shipped config's name ('arseq configs' lists them)")
        raise DataError("no modality: set modality.name in the config (or --modality.name)")
    modality_cls = resolve(name) if name else None
    parser = config_parser(verb, help, modality_cls)
    add(parser)
    try:
        cfg = parser.parse_args(argv)
    except Exception as e:  # jsonargparse's ArgumentError
        raise parse_error(e, argv=argv) from None
    for section in ("modality", "data", *sections):
        if not hasattr(cfg.get(section), "as_dict"):
            raise DataError(f"config section {section!r} must be a mapping of keys to values, got {cfg.get(section)!r}")
    if name is None or modality_cls is None:  # only --help/--print_config get here without one, and they exit
        raise DataError("no modality: set modality.name in the config (or --modality.name)")
    options = {k: v for k, v in cfg.modality.as_dict().items() if k != "name"}
    return ConfigCall(name, modality_cls(**options), options, DataConfig(**cfg.data.as_dict()), cfg)
