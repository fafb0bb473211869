"""`arseq modalities`: the registered modalities, and why any cannot be loaded."""
from __future__ import annotations

import argparse
import sys
import warnings

from arseq.modalities import PluginWarning, loadable

HELP = "list the registered modalities"


def run_modalities(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="arseq modalities", description=HELP + ": name, package, version, class.").parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)  # only ours: library import warnings keep their filters
        entries = loadable()
    for entry, _ in entries:
        print(f"{entry.name}\t{entry.package} {entry.version}\t{entry.target}")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0
