"""Image infilling (`generate --prompt IMAGE --keep-rows 1-3,7-8`): the patch rows not kept are repainted so that
they join the rows below them (a model trained with `data.fim_rate` > 0, whose cuts fall on patch rows). The
constraint writes exactly the missing rows' codes, then EOS; the kept rows' codes are the prompt's, unchanged."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from arseq.errors import DataError
from arseq.modalities.base import Constraint, Fim, MiddleView, Sample
from arseq.modalities.infill_ranges import check_fim, gap_of, parse_ranges
from arseq.modalities.plan import Plan, Request
from arseq.tokenizers.patch import PatchTokenizer


@dataclass
class ImageInfill:
    """The prompt image's codes (as token ids) with patch rows [a, b) to repaint."""

    codes: list[int]
    grid: int
    a: int
    b: int

    @property
    def missing(self) -> int:
        """Codes the middle must have: the missing rows'."""
        return (self.b - self.a) * self.grid

    def prompt(self, fim: Fim, before: list[int]) -> list[int]:
        return fim.prompt(before, self.codes[: self.a * self.grid], self.codes[self.b * self.grid :])

    def constraint(self, tok: PatchTokenizer, fim: Fim, skip: int) -> Constraint:
        """Codes until the missing rows are full, then EOS."""
        allow = torch.zeros(2, tok.vocab_size, dtype=torch.bool)
        allow[0, tok.code_offset : tok.label_offset] = True
        allow[1, tok.eos_id] = True

        def allowed(middles: list[list[int]]) -> torch.Tensor:
            return allow[torch.tensor([int(len(m) >= self.missing) for m in middles])]

        return MiddleView(allowed, [], fim, skip)

    def complete(self, before: list[int], tokens: list[int], eos: int) -> list[int]:
        """The whole image's tokens: kept rows, the repainted ones between them."""
        middle = [t for t in tokens if t != eos][: self.missing]
        return [*before, *self.codes[: self.a * self.grid], *middle, *self.codes[self.b * self.grid :], eos]


def image_infill(tok: PatchTokenizer, pixels: np.ndarray, keep: str, fim: Fim | None) -> ImageInfill:
    """The prompt's codes and the one run of patch rows `--keep-rows` leaves out; one-line errors."""
    check_fim(fim, "--keep-rows")
    a, b = gap_of(parse_ranges(keep, tok.grid, "--keep-rows", "patch row"), tok.grid, "--keep-rows", "patch row")
    return ImageInfill((tok.codes(pixels) + tok.code_offset).tolist(), tok.grid, a, b)


def row_cuts(tok: PatchTokenizer, tokens: np.ndarray, start: int) -> np.ndarray:
    """Positions in `tokens` (its first at `start` in its item) where a patch row begins."""
    first = 2 if tok.labels else 1  # BOS (and an old model's label token) before the codes
    where = start + np.arange(len(tokens) + 1) - first
    return np.flatnonzero((where >= 0) & (where % tok.grid == 0))


def infill_plan(tok: PatchTokenizer, request: Request, prompt: tuple[np.ndarray, int] | None, labels: list[str | None]) -> Plan:
    """The plan of `--keep-rows`: one infilling prompt per sample (its class as `_labels` chose it)."""
    if prompt is None:
        raise DataError("--keep-rows needs --prompt IMAGE: the image whose other rows are repainted")
    if request.options.prompt_rows is not None:
        raise DataError("--keep-rows decides the rows kept; drop --prompt-rows")
    fim = check_fim(request.fim, "--keep-rows")  # (image_infill's first check)
    infill = image_infill(tok, prompt[0], request.options.keep_rows, fim)
    heads = [[tok.label_id(label)] if tok.labels and label else [] for label in labels]
    prompts = [infill.prompt(fim, [tok.bos_id, *head]) for head in heads]
    skip = len(prompts[0]) - prompts[0].index(fim.mid_id) - 1  # SPM prompts end with the prefix
    return Plan(
        prompts,
        constraint=partial(infill.constraint, tok, fim, skip),
        parsed=(prompt[0], infill),
        new_tokens=infill.missing + 1,
        conditions=None if tok.labels else [{"label": x} if x else {} for x in labels],
    )


def completed(tok: PatchTokenizer, samples: list[Sample], plan: Plan) -> list[Sample]:
    """With `--keep-rows`, each sample as the whole image's tokens; otherwise the samples as they are."""
    parsed = plan.parsed
    if not (isinstance(parsed, tuple) and len(parsed) == 2 and isinstance(parsed[1], ImageInfill)):
        return samples
    infill, out = parsed[1], []
    for s in samples:
        cut = next((i for i, t in enumerate(s.prompt) if t >= tok.vocab_size), len(s.prompt))  # the first sentinel
        out.append(replace(s, prompt=[], tokens=infill.complete(list(s.prompt[:cut]), s.tokens, tok.eos_id)))
    return out
