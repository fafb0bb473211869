"""The tokenizer protocol every modality's tokenizer follows.

A tokenizer is plain data: `to_dict()` returns JSON-able state, so it can live inside a checkpoint
(loaded with ``weights_only=True``) and in an export directory as ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

from arseq.atomic import atomic_write

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)


@runtime_checkable
class Tokenizer(Protocol):
    """What the core needs from a tokenizer: ids in, ids out, three special ids, JSON state."""

    kind: ClassVar[str]  # stored in the state so the owning modality can rebuild the right class

    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...

    def encode(self, item: Any) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> Any: ...
    def to_dict(self) -> dict[str, Any]: ...
    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Tokenizer: ...


def check_special_ids(hf: Any, what: str) -> None:
    """A Hugging Face tokenizer must give the specials the ids every arseq tokenizer uses (0, 1, 2)."""
    if [hf.token_to_id(s) for s in SPECIALS] != [0, 1, 2]:
        raise ValueError(f"{what} must map {', '.join(SPECIALS)} to ids 0, 1, 2")


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> None:
    atomic_write(path, json.dumps(tokenizer.to_dict(), ensure_ascii=False))


def read_tokenizer_state(path: str | os.PathLike) -> dict[str, Any]:
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable tokenizer file ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or "kind" not in state:
        raise ValueError(f"{path}: not an arseq tokenizer file (no 'kind' field)")
    return state
