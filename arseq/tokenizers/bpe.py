"""Byte-level BPE (GPT-2 style) trained with Hugging Face `tokenizers`: lossless on any UTF-8 text."""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from arseq.tokenizers.base import SPECIALS, check_special_ids


class BPETokenizer:
    kind: ClassVar[str] = "bpe"
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, hf: HFTokenizer):
        check_special_ids(hf, "BPE tokenizer")
        self.hf = hf

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> BPETokenizer:
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.hf.to_str()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> BPETokenizer:
        return cls(HFTokenizer.from_str(state["json"]))
