"""Reading a YAML config file before the full parser exists (to learn the modality or the checkpoint it names)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from arseq.errors import DataError, first_line


def read_config(path: str) -> Any:
    """The parsed YAML of `path`; a file that cannot be read or parsed is a one-line DataError."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read config ({first_line(e)})") from None
