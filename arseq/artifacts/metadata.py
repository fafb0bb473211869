"""What a checkpoint or export says about its model besides the weights and the tokenizer: the modality and its
options, the data and model configs, the condition tokens. One typed record, read in one place, versioned.

Stored as a mapping: in a `.ckpt` under `arseq` (with `tokenizer` beside it), in an export's `config.json`
(with `format`), in a Hugging Face folder's `arseq.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from arseq.errors import DataError

# 1: the layout below. A file written by a newer arseq with another layout is refused in one line.
META_VERSION = 1


@dataclass(frozen=True)
class RunMeta:
    modality: str  # a registered modality name or the `package.module:Class` the config named
    modality_options: dict[str, Any]  # the config's modality section: the modality is rebuilt from it
    data: dict[str, Any]  # DataConfig as trained (paths included: read only when the user names none)
    model: dict[str, Any]  # TransformerConfig
    conditions: dict[str, Any] | None = None  # Controls.to_dict() of a conditioned model
    fim: dict[str, Any] | None = None  # the fill-in-the-middle sentinels (Fim.to_dict()) of a model trained with data.fim_rate
    # Tokens per data item (prepare's item_tokens: items, median, p95): how long the pieces it learned run (None:
    # not recorded).
    item_tokens: dict[str, int] | None = None
    version: int = META_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "modality": {"name": self.modality, "options": self.modality_options},
            "data": self.data,
            "model": self.model,
        }
        if self.conditions is not None:
            out["conditions"] = self.conditions
        if self.fim is not None:
            out["fim"] = self.fim
        if self.item_tokens is not None:
            out["item_tokens"] = self.item_tokens
        return out

    @classmethod
    def from_dict(cls, stored: Any, where: str) -> RunMeta:
        """The record a file holds; a missing or mistyped part is one line naming the file."""
        if not isinstance(stored, dict):
            raise DataError(f"{where}: the model's settings are a {type(stored).__name__}, not a mapping")
        version = stored.get("version", 1)  # files from before the field existed have the same layout
        if version != META_VERSION:
            raise DataError(f"{where}: settings of version {version!r}; this arseq reads version {META_VERSION} (written by another arseq version?)")
        spec = stored.get("modality")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise DataError(f"{where}: modality settings are unusable (no modality name)")
        options = spec.get("options", {})
        for name, value, kind in (
            ("modality options", options, dict),
            ("data", stored.get("data", {}), dict),
            ("model", stored.get("model"), dict),
            ("conditions", stored.get("conditions"), (dict, type(None))),
            ("fim", stored.get("fim"), (dict, type(None))),
            ("item_tokens", stored.get("item_tokens"), (dict, type(None))),
        ):
            if not isinstance(value, kind):
                raise DataError(f"{where}: {name} settings are a {type(value).__name__}, not a mapping")
        item_tokens = stored.get("item_tokens")
        if item_tokens is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item_tokens.values()):
            raise DataError(f"{where}: item_tokens settings hold a value that is not a count")
        return cls(spec["name"], options, stored.get("data", {}), stored["model"], stored.get("conditions"), stored.get("fim"), item_tokens)

    def without_data_paths(self) -> RunMeta:
        """Exports and HF folders are models from elsewhere: the paths they name (`/etc/passwd`, `/usr/**/*`) are
        never read; a built-in `source` stays."""
        return replace(self, data={**self.data, "paths": None, "val_paths": None})

    def data_paths(self) -> list[str]:
        """The files the model was trained and validated on, as its data config names them."""
        return [
            str(p)
            for key in ("paths", "val_paths")
            for p in ([self.data.get(key)] if isinstance(self.data.get(key), str) else self.data.get(key) or [])
        ]
