"""`arseq modalities`: the registered modalities, and why any cannot be loaded."""

from __future__ import annotations

import sys
import warnings

from jsonargparse import ArgumentParser

from arseq.errors import DataError, one_line
from arseq.modalities import PluginWarning, loadable

HELP = "list the registered modalities"


def run_modalities(argv: list[str]) -> int:
    try:
        ArgumentParser(prog="arseq modalities", description=HELP + ": name, package, version, class.", exit_on_error=False).parse_args(argv)
    except Exception as e:  # jsonargparse's ArgumentError: one line
        raise DataError(one_line(e)) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)  # only ours: library import warnings keep their filters
        entries = loadable()
    for entry, _ in entries:
        print(f"{entry.name}\t{entry.package} {entry.version}\t{entry.target}")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0
