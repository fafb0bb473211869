"""`arseq configs [NAME]`: the configs that ship with arseq, or one of them as YAML to start your own from."""

from __future__ import annotations

import logging
import sys

from jsonargparse import ArgumentParser

from arseq.app.shipped_configs import find, folder, names, summary
from arseq.errors import DataError, one_line

log = logging.getLogger(__name__)
HELP = "list the shipped configs, or print one to start your own from"


def run_configs(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="arseq configs",
        exit_on_error=False,
        description=HELP + " (arseq configs music/bach_chorales > mine.yaml). 'arseq train --config NAME' trains one as shipped.",
    )
    parser.add_argument("name", nargs="?", default=None, help="a shipped config (music/bach_chorales); none: list them all")
    try:
        name = parser.parse_args(argv).name
    except Exception as e:  # jsonargparse's ArgumentError: one line
        raise DataError(one_line(e)) from None
    if name is None:
        shipped = names()
        width = max(map(len, shipped), default=0)
        for key, path in shipped.items():
            print(f"{key:<{width}}  {summary(path)}")
        log.info("in %s", folder())
        return 0
    config = find(name)
    if config is None:
        raise DataError(f"{name}: not a shipped config ('arseq configs' lists them)")
    sys.stdout.write(config.read_text(encoding="utf-8"))
    return 0
