"""jsonargparse's refusals as one line a user reads at a glance.

jsonargparse names a value of the wrong type with its internals ('Parser key "temperature": Does not validate
against any of the Union subtypes Subtypes: [<class 'float'>, <class 'NoneType'>] Errors: - Expected a <class
'float'> ...'). No option of jsonargparse shortens that, so the key, the types and the value are read back from the
text here; a message of another shape is passed on, on one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from arseq.app.argv import config_files, flag_values
from arseq.errors import DataError, one_line

KEY = re.compile(r'Parser key "([^"]+)"')
EXPECTED = re.compile(r"(?:Expected a <class '([\w.]+)'>|Not of type (\w+)|Expected a typing\.Literal\[([^\]]*)\])")
GIVEN = re.compile(r"(?:Given|Got) value: (.*?)\s*$")
TYPES = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false", "Path": "a path"}


def parse_error(error: BaseException, flags: bool = True, argv: Sequence[str] = ()) -> DataError:
    """`error` from a jsonargparse parse, as a DataError of one line: `--top-k: expected an integer, got 'x'` (with
    `flags`; else the Python name: `top_k: ...`; a value that came from the --config files of `argv`, not from a
    flag: `gen.yaml: top_k: ...`), or its own text where it says something else."""
    text = one_line(error)
    key, given = KEY.search(text), GIVEN.search(text)
    found = EXPECTED.findall(text)
    choices = ", ".join(dict.fromkeys(c.strip().strip("'\"") for _, _, listed in found if listed for c in listed.split(",")))
    kinds = [f"one of {choices}" if listed else _kind(cls or path) for cls, path, listed in found]  # a Literal: them all
    expected = [kind for kind in dict.fromkeys(kinds) if kind != "a NoneType"]
    if key is None or given is None or not expected:
        return DataError(text)
    name, value = key.group(1), given.group(1)
    configs = config_files(argv)
    if flags and value not in flag_values(argv, f"--{name}", f"--{name.replace('_', '-')}") and configs:
        name = f"{', '.join(configs)}: {name}"
    elif flags:
        name = "--" + (name if "." in name else name.replace("_", "-"))  # sections keep their keys' spelling
    return DataError(f"{name}: expected {' or '.join(expected)}, got {value!r}")


def _kind(cls: str) -> str:
    """'an integer' for int, 'a path' for pathlib.Path."""
    name = cls.rsplit(".", 1)[-1]
    return TYPES.get(name, f"a {name}")
