"""Reading a YAML config file before the full parser exists (to learn the modality or the checkpoint it names).

Every `--config` passes here before jsonargparse reads it, so this is where a config is bounded: a
"billion laughs" file (aliases of aliases) is a few hundred bytes that expand to billions of nodes, and
took 80 s and 5.5 GB inside the parser even under keys it ignores. Its expanded size is counted on the
composed node graph (shared nodes, nothing expanded) and refused past MAX_NODES.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from arseq.errors import DataError, first_line

MAX_BYTES = 16 * 2**20  # a config of options is kilobytes; this leaves room for long lists of paths
MAX_NODES = 1_000_000  # scalars, lists and mappings once aliases are expanded


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document holds once every alias is expanded (what a consumer walking it visits)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            if sizes[id(node)] < 0:
                raise DataError("a recursive alias (a node that contains itself)")
            return sizes[id(node)]
        if depth > 500:
            raise DataError("nested more than 500 levels deep")
        sizes[id(node)] = -1  # being counted
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        sizes[id(node)] = min(total, MAX_NODES + 1)  # capped: a bomb's counts would still grow without end
        return sizes[id(node)]

    return size(root, 0)


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses documents past MAX_NODES expanded nodes before constructing anything."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None and _expanded_size(node) > MAX_NODES:
            raise DataError(f"more than {MAX_NODES:,} values once its aliases are expanded (an alias bomb?)")
        return node


def read_config(path: str) -> Any:
    """The parsed YAML of `path`; a file that cannot be read or parsed, or is too large, is a one-line DataError."""
    try:
        file = Path(path)
        if file.is_file() and file.stat().st_size > MAX_BYTES:
            raise DataError(f"{file.stat().st_size:,} bytes, more than a config may hold ({MAX_BYTES:,})")
        return yaml.load(file.read_text(encoding="utf-8"), Loader=BoundedLoader)  # noqa: S506 - a SafeLoader
    except DataError as e:
        raise DataError(f"{path}: cannot read config ({e})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise DataError(f"{path}: cannot read config ({first_line(e)})") from None
