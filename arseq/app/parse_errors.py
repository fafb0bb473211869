"""jsonargparse's refusals as one line a user reads at a glance.

jsonargparse names a value of the wrong type with its internals ('Parser key "temperature": Does not validate
against any of the Union subtypes Subtypes: [<class 'float'>, <class 'NoneType'>] Errors: - Expected a <class
'float'> ...'). No option of jsonargparse shortens that, so the key, the types and the value are read back from the
text here; a message of another shape is passed on, on one line.
"""

from __future__ import annotations

import re

from arseq.errors import DataError, one_line

KEY = re.compile(r'Parser key "([^"]+)"')
EXPECTED = re.compile(r"(?:Expected a <class '([\w.]+)'>|Not of type (\w+)|Expected a typing\.Literal\[([^\]]*)\])")
GIVEN = re.compile(r"(?:Given|Got) value: (.*?)\s*$")
TYPES = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false", "Path": "a path"}


def parse_error(error: BaseException, flags: bool = True) -> DataError:
    """`error` from a jsonargparse parse, as a DataError of one line: `--top-k: expected an integer, got 'x'` (with
    `flags`; else the Python name: `top_k: ...`), or its own text where it says something else."""
    text = one_line(error)
    key, given = KEY.search(text), GIVEN.search(text)
    expected = [_kind(name or path, choices) for name, path, choices in EXPECTED.findall(text) if name != "NoneType"]
    if key is None or given is None or not expected:
        return DataError(text)
    name = key.group(1)
    if flags:
        name = "--" + (name if "." in name else name.replace("_", "-"))  # sections keep their keys' spelling
    return DataError(f"{name}: expected {' or '.join(dict.fromkeys(expected))}, got {given.group(1)!r}")


def _kind(name: str, choices: str) -> str:
    """'an integer' for int, 'one of adamw, muon' for Literal['adamw', 'muon']."""
    if not name:
        return "one of " + ", ".join(c.strip().strip("'\"") for c in choices.split(","))
    name = name.rsplit(".", 1)[-1]  # pathlib.Path: Path
    return TYPES.get(name, f"a {name}")
