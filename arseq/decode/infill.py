"""Infilling on the decode engine: constraints for models trained with fill-in-the-middle (arseq.data.fim).

An infilling row is an ordinary row whose prompt is `BOS [conditions] <pre> prefix <suf> suffix <mid>` (or the
SPM order, `Fim.prompt`): it streams, batches and slides like any other. Two constraints make it behave:

- `hide_sentinels` wraps a FIM model's every constraint (the core does it in `make_plan`): the sentinels are
  never sampled, so a FIM model writing left to right never starts an infill of its own;
- `MiddleView` shows a modality's constraint the sequence the middle continues (`before`: BOS and the whole
  prefix, however much of it the prompt kept) plus the middle so far, so the modality's grammar, bar counts
  and lengths apply to the middle as if it were written right after the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from arseq.decode.config import Constraint
from arseq.decode.row_state import RowState
from arseq.errors import DataError

ORDERINGS = ("psm", "spm", "both")
SENTINELS = 3  # <pre>, <suf>, <mid>


@dataclass(frozen=True)
class Fim:
    """The FIM sentinels of a model (saved in its checkpoint as `fim`) and how it was trained with them."""

    offset: int  # first sentinel id: the tokenizer's vocabulary plus the control tokens
    rate: float = 0.5
    ordering: str = "psm"

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise DataError(f"data.fim_rate must be in [0, 1], got {self.rate}")
        if self.ordering not in ORDERINGS:
            raise DataError(f"data.fim_ordering must be one of {', '.join(ORDERINGS)}, got {self.ordering!r}")

    @property
    def size(self) -> int:
        return SENTINELS

    @property
    def pre_id(self) -> int:
        return self.offset

    @property
    def suf_id(self) -> int:
        return self.offset + 1

    @property
    def mid_id(self) -> int:
        return self.offset + 2

    def prompt(self, before: list[int], prefix: list[int], suffix: list[int]) -> list[int]:
        """An infilling prompt in the ordering the model was trained on (PSM where it knows both): `before`
        (BOS; the core inserts the conditions after it) and the sentinels around prefix and suffix."""
        if self.ordering == "spm":
            return [*before, self.pre_id, self.suf_id, *suffix, self.mid_id, *prefix]
        return [*before, self.pre_id, *prefix, self.suf_id, *suffix, self.mid_id]

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "rate": self.rate, "ordering": self.ordering}

    @classmethod
    def from_dict(cls, state: dict[str, Any] | None) -> Fim | None:
        if not state:
            return None
        return cls(int(state["offset"]), float(state["rate"]), str(state["ordering"]))

    @classmethod
    def of(cls, rate: float, ordering: str, offset: int) -> Fim | None:
        """The sentinels a training run with `data.fim_rate` reserves after `offset` ids; None at rate 0."""
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise DataError(f"data.fim_rate must be a number in [0, 1], got {rate!r}")
        return cls(offset, float(rate), ordering) if rate > 0 else None


def hide_sentinels(inner: Constraint | None, fim: Fim) -> Constraint:
    """`inner` (masks over the ids before the sentinels, i.e. the tokenizer's and the control tokens), or
    everything, and never a sentinel."""
    width = fim.offset

    def allowed(rows: list[list[int]]) -> torch.Tensor:
        mask = torch.zeros(len(rows), width + fim.size, dtype=torch.bool)
        mask[:, :width] = inner(rows).to(torch.bool).cpu() if inner is not None else True
        return mask

    return allowed


class MiddleView:
    """A constraint on the middle of infilling rows: `inner` sees `before` + the tokens after the row's
    `<mid>` (for SPM rows: after the prefix that follows `<mid>`). The views persist between calls and grow
    (or, after speculative rejections, shrink) with their rows, as constraints keeping per-row state expect."""

    def __init__(self, inner: Constraint, before: Sequence[int], fim: Fim, skip: int = 0):
        self.inner, self.before, self.fim, self.skip = inner, list(before), fim, skip
        self.views: RowState[tuple[list[int], int]] = RowState()  # per row: (view, where its middle starts)

    def __call__(self, rows: list[list[int]]) -> torch.Tensor:
        shown = []
        for row in rows:
            kept = self.views.get(row)
            if kept is not None:
                view, start = kept
            else:
                if self.fim.mid_id not in row:
                    raise DataError("infilling: a row without the <mid> sentinel reached the infill constraint")
                start = row.index(self.fim.mid_id) + 1 + self.skip
                view = list(self.before)
            del view[len(self.before) + max(0, len(row) - start) :]
            view.extend(row[start + len(view) - len(self.before) :])
            self.views.set(row, (view, start))
            shown.append(view)
        return self.inner(shown)
