"""Text infilling (`generate --prompt "It was [...] night." --gap "[...]"`): the model writes what joins the text
before the marker to the text after it (a model trained with `data.fim_rate` > 0). The middle ends where the model
ends it (its EOS: FIM training puts one after every middle), or at --max-new-tokens."""

from __future__ import annotations

from dataclasses import dataclass

from arseq.errors import DataError
from arseq.modalities.base import Fim
from arseq.modalities.infill_ranges import check_fim
from arseq.tokenizers.base import Tokenizer


@dataclass
class TextInfill:
    """A prompt split at its gap marker: the text before and after it."""

    before: str
    after: str

    def prompt(self, tok: Tokenizer, fim: Fim, context: int | None) -> list[int]:
        """BOS and the FIM prompt; the far ends of the two sides dropped where they would not leave the middle
        a quarter of the context."""
        try:
            prefix, suffix = tok.encode(self.before), tok.encode(self.after)
        except ValueError as e:
            raise DataError(f"--gap: {e}") from None
        budget = max(2, (context or 10**9) * 3 // 4 - 4)
        keep_prefix = min(len(prefix), max(budget // 2, budget - len(suffix)))  # the nearest tokens of each side
        keep_suffix = min(len(suffix), budget - keep_prefix)
        prefix, suffix = prefix[len(prefix) - keep_prefix :], suffix[:keep_suffix]
        return fim.prompt([tok.bos_id], prefix, suffix)

    def text(self, middle: str) -> str:
        return self.before + middle + self.after


def split_gap(prompt: str | None, marker: str, fim: Fim | None) -> TextInfill:
    """The prompt's two sides of its one gap marker; one-line errors naming --gap."""
    check_fim(fim, "--gap")
    if not marker:
        raise DataError("--gap: give the marker that stands for the gap in --prompt, e.g. --gap '[...]'")
    count = (prompt or "").count(marker)
    if count != 1:
        raise DataError(f"--gap {marker!r}: --prompt must hold the marker exactly once (it holds it {count} times)")
    before, after = (prompt or "").split(marker)  # holds the marker: not None
    return TextInfill(before, after)
