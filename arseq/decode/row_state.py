"""What a stateful constraint keeps per row, written once.

The engine hands a constraint the same list object for a row from step to step: it grows in place, and is cut
back where a speculative proposal was rejected; a row that joins is a new list. A constraint can therefore keep
incremental state per row (a grammar fed so far, running sums) and find it again by the list's identity. Ids of
dead lists are reused, so the id alone is not enough: the list itself is kept and compared.
"""

from __future__ import annotations

from typing import Generic, TypeVar

S = TypeVar("S")


class RowState(Generic[S]):
    """Per-row state, found by the row list's identity; None for a row not seen before."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[list[int], S]] = {}

    def get(self, row: list[int]) -> S | None:
        entry = self._rows.get(id(row))
        return entry[1] if entry is not None and entry[0] is row else None

    def set(self, row: list[int], state: S) -> None:
        self._rows[id(row)] = (row, state)
