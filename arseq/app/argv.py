"""What a command line gives a flag, read before (or after) jsonargparse parses it: which --config files to read
for the options that decide the parser itself (the modality, the checkpoint), and whether a bad value came from a
flag or from one of those files."""

from __future__ import annotations

from collections.abc import Sequence


def flag_values(argv: Sequence[str], *flags: str) -> list[str]:
    """The values `argv` gives any of `flags`, in order, written `--flag value` or `--flag=value`."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in flags:
            out += [value] if eq else argv[i + 1 : i + 2]
    return out


def config_files(argv: Sequence[str]) -> list[str]:
    """The files --config names in `argv`, in the order jsonargparse reads them."""
    return [path for path in flag_values(argv, "--config") if path]
