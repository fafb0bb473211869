"""Control tokens: condition one model on fields of each item (a protein's location tag, a piece's key).

A modality names its fields (`Modality.condition_fields`) and puts each item's values in
`Example.conditions`. `prepare` learns the values the data has and reserves, after the modality's own
vocabulary, one token per field for "unknown" and one per value. Every item becomes
`BOS <field=value>... tokens EOS`: one control token per field, in a fixed order, the unknown one where an
item has no value. Training swaps each control token for its field's unknown token with probability
`drop`, so the same model also samples unconditionally. Every training window of a long item starts with
the item's BOS and control tokens (its head: CTRL's control codes head every training sequence), and
sampling keeps the head in the context when the window slides, so a piece past the context still knows
its key. `generate --cond FIELD=VALUE` puts the tokens into every prompt (unknown for fields not given). The modality
sees them only in `augment` (a transposition moves the key: by field and value, `value_of` and `value_id`); the core
hides them from its constraint, its writer and its metrics (`hide`, `strip`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from arseq.decode.config import Constraint
from arseq.decode.row_state import RowState
from arseq.errors import DataError


def split_condition(spec: str) -> tuple[str, str | None]:
    """`FIELD=VALUE` (quotes around the value allowed) as (field, value); value None without '='."""
    name, eq, value = spec.partition("=")
    return name.strip(), value.strip().strip("\"'") if eq else None


@dataclass
class Controls:
    """The control tokens of a conditioned model (saved in its checkpoint as `conditions`)."""

    offset: int  # the modality tokenizer's vocabulary size: control ids start here
    fields: dict[str, list[str]]  # field -> the values seen in the data, sorted
    drop: float = 0.1  # training: chance that a control token is replaced by its field's unknown token
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> value -> items (training data)
    every_window: bool = False  # the head starts every training window (models trained before it: only each item)

    @property
    def size(self) -> int:
        return sum(len(values) + 1 for values in self.fields.values())

    @property
    def width(self) -> int:
        """Control tokens per sequence (one per field)."""
        return len(self.fields)

    @property
    def head(self) -> int:
        """Tokens that start every training window and stay in the context when sampling slides (BOS and
        the control tokens); 0 for models whose training saw them only at the start of each item."""
        return 1 + self.width if self.every_window else 0

    def _base(self, name: str) -> int:
        base = self.offset
        for f, values in self.fields.items():
            if f == name:
                return base
            base += len(values) + 1
        raise KeyError(name)

    def unknown_id(self, name: str) -> int:
        return self._base(name)

    def value_id(self, name: str, value: str) -> int:
        return self._base(name) + 1 + self.fields[name].index(value)

    def value_of(self, name: str, token: int) -> str | None:
        """The value of field `name` that control token `token` names; None for any other token."""
        i = int(token) - self._base(name) - 1
        return self.fields[name][i] if 0 <= i < len(self.fields[name]) else None

    def ids(self, values: Mapping[str, str | None]) -> list[int]:
        """One control id per field: the value's, or unknown where it is missing or unseen."""
        out = []
        for f, known in self.fields.items():
            value = values.get(f)
            out.append(self.value_id(f, value) if value is not None and value in known else self.unknown_id(f))
        return out

    def given(self, specs: Sequence[str]) -> dict[str, str]:
        """`--cond FIELD=VALUE` flags as field -> value, checked against what the model knows; one-line errors."""
        given: dict[str, str] = {}
        for spec in specs:
            name, value = split_condition(spec)
            if value is None or not name:
                raise DataError(f"--cond {spec!r}: expected FIELD=VALUE, e.g. --cond {next(iter(self.fields), 'tag')}=...")
            if name in given:  # the second would silently win: which one the user meant is unknown
                raise DataError(f"--cond {spec!r}: field {name!r} given twice ({name}={given[name]} too); give each field once")
            self.check(name, value, f"--cond {spec!r}")
            given[name] = value
        return given

    def check(self, name: str, value: str, flag: str) -> None:
        """A DataError naming `flag` unless the model knows the field and was trained on the value."""
        if name not in self.fields:
            raise DataError(f"{flag}: this model knows the condition field(s) {', '.join(self.fields)}, not {name!r}")
        if value not in self.fields[name]:
            raise DataError(f"{flag}: {name} {value!r} was never seen in training; known: {', '.join(self.fields[name])}")

    def read(self, tokens: Sequence[int] | np.ndarray) -> dict[str, str]:
        """The values a conditioned sequence's control tokens name (fields with an unknown token left out)."""
        out: dict[str, str] = {}
        for slot, (name, values) in enumerate(self.fields.items()):
            i = int(tokens[1 + slot]) - self._base(name) - 1 if len(tokens) > 1 + slot else -1
            if 0 <= i < len(values):
                out[name] = values[i]
        return out

    def insert(self, tokens: Sequence[int], ids: Sequence[int]) -> list[int]:
        """The control ids right after BOS (tokens[0])."""
        return [tokens[0], *ids, *tokens[1:]]

    def strip(self, tokens: Iterable[int]) -> list[int]:
        """The modality's own tokens: control ids removed."""
        return [int(t) for t in tokens if not self.offset <= t < self.offset + self.size]

    def unknown_table(self) -> np.ndarray:
        """id -> the id training may swap it for: a control id's field's unknown id, every other id itself."""
        table = np.arange(self.offset + self.size, dtype=np.int64)
        for name, values in self.fields.items():
            base = self._base(name)
            table[base : base + len(values) + 1] = base
        return table

    def hide(self, inner: Constraint | None) -> Constraint:
        """The modality's constraint on rows without their control tokens, and never a control token next.
        Control ids later in a row (only where sampling ran without this constraint, as `analyze drift`
        replays it) are hidden too."""
        width, lo, vocab = self.width, self.offset, self.offset + self.size
        # per row: its tokens without controls, the row index of each of them, row tokens read
        views: RowState[tuple[list[int], list[int], int]] = RowState()

        def allowed(rows: list[list[int]]) -> torch.Tensor:
            shown = []
            for row in rows:
                view, src, read = views.get(row) or ([row[0]], [0], 1 + width)
                cut = bisect.bisect_left(src, len(row))  # a row may shrink (rejected tokens rolled back)
                del view[max(1, cut) :], src[max(1, cut) :]
                for i in range(min(read, len(row)), len(row)):
                    if not lo <= row[i] < vocab:
                        view.append(row[i])
                        src.append(i)
                views.set(row, (view, src, len(row)))
                shown.append(view)
            mask = torch.zeros(len(rows), vocab, dtype=torch.bool)
            mask[:, : self.offset] = inner(shown) if inner is not None else True
            return mask

        return allowed

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "fields": self.fields, "drop": self.drop, "counts": self.counts, "every_window": self.every_window}

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None) -> Controls | None:
        if not state:
            return None
        return cls(
            int(state["offset"]),
            {k: list(v) for k, v in state["fields"].items()},
            float(state.get("drop", 0.1)),
            {k: dict(v) for k, v in state.get("counts", {}).items()},
            bool(state.get("every_window", False)),
        )

    @classmethod
    def learn(cls, offset: int, names: Sequence[str], items: Sequence[dict[str, str]], drop: float) -> Controls | None:
        """The fields among `names` with two values or more in the items (one value conditions nothing); None when none has."""
        counts = {n: Counter(v for item in items if (v := item.get(n)) is not None) for n in names}
        fields = {n: sorted(c) for n, c in counts.items() if len(c) >= 2}
        if not fields:
            return None
        return cls(offset, fields, drop, {n: dict(sorted(counts[n].items())) for n in fields}, every_window=True)
