"""Free-running samples going back: `analyze drift --revise-rounds N` revises the samples it drew without the
constraint (`arseq revise`'s rounds with a fill-in-the-middle model) and measures them again the same way, so
S(n) against (1 - e)^n can be read before and after revision.

A revised piece is written back through the tokenizer's events (`MusicInfill.complete`), which repairs what
the score grammar cannot read. So the samples are first re-encoded that way (the `reencoded` arm: no bar
resampled, the grammar errors gone) and revision starts from them: what revision itself removes is the
difference between the `reencoded` and the `revised` arms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from arseq.analysis import survival as fr
from arseq.analysis.revise import Piece, revise, score_tokenizer
from arseq.artifacts.checkpoint import Loaded
from arseq.decode.config import SamplingConfig
from arseq.errors import DataError

Mark = Callable[[list[list[int]]], list[np.ndarray]]  # generated tokens -> errors per token, as drift marks them


@dataclass(frozen=True)
class Revision:
    """How the samples are revised (`arseq revise`'s options) and how their survival is measured."""

    rounds: int
    candidates: int = 4
    seed: int = 0
    window: int = 8  # the clustering ratio's window
    n_boot: int = 500
    cfg: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.9, top_p=0.95))


def revised_survival(
    loaded: Loaded,
    prompts: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    conditions: Sequence[dict[str, str]],
    mark: Mark,
    revision: Revision,
) -> dict[str, Any]:
    """Survival of the re-encoded and of the revised samples, and revise's per-round report. `prompts` hold the
    condition tokens after BOS as sampled."""
    tok, controls = score_tokenizer(loaded, "--revise-rounds"), loaded.controls
    width = controls.width if controls is not None else 0
    own = [[p[0], *p[1 + width :]] for p in prompts]  # the pieces' own tokens: BOS, then what the prompt adds
    pieces = [Piece([*o, *g, tok.eos_id], dict(c)) for o, g, c in zip(own, generated, conditions)]
    reencoded = [Piece(tok.encode_events(tok.decode_events(p.ids)), p.conditions) for p in pieces]
    revised, rounds = revise(loaded, list(reencoded), revision.rounds, revision.candidates, revision.cfg, revision.seed)
    out: dict[str, Any] = {"rounds": rounds}
    for name, arm in (("reencoded", reencoded), ("revised", revised)):
        continued = [_after(p.ids, o, tok.eos_id) for p, o in zip(arm, own)]
        if not any(continued):
            raise DataError(f"--revise-rounds: the samples hold no notes once re-encoded ({name}), so there is nothing to measure")
        errors = mark(continued)
        curve = fr.survival(errors, n_boot=revision.n_boot, seed=revision.seed)
        out[name] = {"curve": curve, "clustering": fr.clustering_ratio(errors, revision.window)}
    return out


def _after(ids: list[int], own_prompt: list[int], eos: int) -> list[int]:
    """A piece's tokens after its prompt, without the closing EOS (as the sampler returns them)."""
    if ids[: len(own_prompt)] != own_prompt:
        raise ValueError("a revised piece no longer starts with its prompt")  # revision never touches the prompt's tokens
    body = ids[len(own_prompt) :]
    return body[:-1] if body and body[-1] == eos else body
