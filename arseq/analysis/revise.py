"""Revision: a finished piece improved where it is weakest, with a fill-in-the-middle model (`arseq revise`).

Left to right, a model never takes a token back: an out-of-key note changes the path for good (see
docs/error-accumulation.md). Each round here scores every piece left to right, picks its weakest bar (bars with
errors by the modality's own predicate first, e.g. out-of-key notes; then the highest mean NLL per token),
resamples that bar `candidates` times given both sides (music infilling: the grammar, the bar count, the meter
and key kept), and keeps the best candidate if it beats the piece as it was: fewer errors by the predicate first,
then a likelier whole piece (likelihood alone rewards the model's own habits: with it, a step-250 music model's
revisions raised the out-of-key rate from 0.215 to 0.246 while the NLL fell 6 %). Per round it reports the total
and per-token NLL, the error rate and how many pieces changed.

Music only for now: the other modalities' infilling (text --gap, protein --redesign, image --keep-rows) has no
weakest-span search yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from arseq.analysis.score import token_scores
from arseq.artifacts.checkpoint import Loaded
from arseq.data.fim import Fim
from arseq.decode.config import Row, SamplingConfig
from arseq.decode.engine import Engine
from arseq.decode.infill import hide_sentinels
from arseq.errors import DataError
from arseq.modalities.infill_ranges import check_fim
from arseq.modalities.music.infill import MusicInfill
from arseq.tokenizers.score import ScoreTokenizer
from arseq.tokenizers.score.vocab import PITCH

log = logging.getLogger(__name__)


@dataclass
class Piece:
    """One piece being revised: its own tokens (BOS ... EOS) and the condition values it is sampled under."""

    ids: list[int]
    conditions: dict[str, str] = field(default_factory=dict)


def _full(loaded: Loaded, piece: Piece) -> list[int]:
    controls = loaded.controls
    return controls.insert(piece.ids, controls.ids(piece.conditions)) if controls is not None else list(piece.ids)


def score(loaded: Loaded, pieces: list[Piece], batch_size: int = 16) -> list[np.ndarray]:
    """Per piece, the NLL (nats) of each of its own tokens after BOS, left to right (conditions given)."""
    width = loaded.controls.width if loaded.controls is not None else 0
    scored = token_scores(loaded.model, [_full(loaded, p) for p in pieces], batch_size=batch_size, pad_id=loaded.tokenizer.pad_id)
    return [-lp[width:] for lp, _ in scored]  # token i + 1 of the piece's own tokens at index i


def errors(loaded: Loaded, piece: Piece) -> np.ndarray:
    """Per own token, whether the modality's error predicate flags it (none where it has no predicate)."""
    predicate = loaded.modality.error_predicate(loaded.tokenizer, [])
    return predicate(piece.ids) if predicate is not None else np.zeros(len(piece.ids), dtype=bool)


def weakest_bar(tok: ScoreTokenizer, piece: Piece, nll: np.ndarray, wrong: np.ndarray) -> int | None:
    """The bar to resample: most flagged tokens first, then the highest mean NLL per token (None: no bar)."""
    ids = np.asarray(piece.ids)
    bar_at = np.flatnonzero(ids == tok.bar_id)
    ends = np.concatenate([bar_at[1:], [len(ids) - 1]])
    keys = [(int(wrong[a:b].sum()), float(nll[a - 1 : b - 1].mean()) if b > a else 0.0) for a, b in zip(bar_at, ends)]
    return int(max(range(len(keys)), key=lambda k: keys[k])) if keys else None


def _stats(loaded: Loaded, pieces: list[Piece], nlls: list[np.ndarray]) -> dict[str, Any]:
    tok = score_tokenizer(loaded, "revise")
    wrong = [errors(loaded, p) for p in pieces]
    pitches = sum(int((tok.types[np.asarray(p.ids)] == PITCH).sum()) for p in pieces)
    flagged = sum(int(w.sum()) for w in wrong)
    return {
        "nll_total": float(sum(n.sum() for n in nlls)),
        "nll_per_token": float(np.concatenate(nlls).mean()),
        "errors": flagged,
        "error_rate": flagged / max(1, pitches),
        "pieces_with_errors": sum(bool(w.any()) for w in wrong),
        "grammar_repairs": sum(tok.decode_events(p.ids).repairs for p in pieces),
    }


def score_tokenizer(loaded: Loaded, flag: str) -> ScoreTokenizer:
    """The model's score tokenizer: revision resamples bars, which only music's score tokens have."""
    if loaded.modality.name != "music":
        raise DataError(f"{flag}: the {loaded.modality.name} modality has no weakest-span search yet (music only)")
    if not isinstance(loaded.tokenizer, ScoreTokenizer):
        raise DataError(f"{flag}: a model of performance tokens has no bars to revise (score tokens only)")
    return loaded.tokenizer


def check_revisable(loaded: Loaded, flag: str) -> Fim:
    """The model's sentinels, or one line saying why `flag` cannot revise with this model."""
    score_tokenizer(loaded, flag)
    return check_fim(Fim.from_dict(loaded.meta.fim), flag)


def revise(
    loaded: Loaded, pieces: list[Piece], rounds: int = 3, candidates: int = 8, cfg: SamplingConfig | None = None, seed: int = 0, slots: int = 16
) -> tuple[list[Piece], list[dict[str, Any]]]:
    """`rounds` rounds of revision (see the module docstring); the revised pieces and one report per round
    (round 0: before)."""
    fim = check_revisable(loaded, "revise")
    if rounds < 1 or candidates < 1:
        raise DataError("revise: --rounds and --candidates must be >= 1")
    tok = score_tokenizer(loaded, "revise")
    cfg = cfg or SamplingConfig(temperature=0.9, top_p=0.95)
    nlls = score(loaded, pieces)
    reports = [{"round": 0, **_stats(loaded, pieces, nlls), "changed": 0}]
    for r in range(1, rounds + 1):
        infills: list[MusicInfill | None] = []
        for p, nll in zip(pieces, nlls):
            a = weakest_bar(tok, p, nll, errors(loaded, p))  # None: a sample that never opened a bar is left as it is
            bar_at = [i for i, t in enumerate(p.ids) if t == tok.bar_id]
            infills.append(MusicInfill(list(p.ids), tok.decode_events(p.ids), bar_at, a, a + 1) if a is not None else None)
        proposals = _resample(loaded, fim, pieces, infills, candidates, cfg, seed + 1000 * r, slots)
        changed = 0
        for i, options in enumerate(proposals):
            if not options:
                continue
            tried = [replace(pieces[i], ids=ids) for ids in options]
            keys = [(int(errors(loaded, t).sum()), float(n.sum())) for t, n in zip(tried, score(loaded, tried))]
            best = min(range(len(tried)), key=lambda k: keys[k])
            if keys[best] < (int(errors(loaded, pieces[i]).sum()), float(nlls[i].sum())):  # fewer errors, else likelier
                pieces[i], changed = tried[best], changed + 1
        nlls = score(loaded, pieces)
        reports.append({"round": r, **_stats(loaded, pieces, nlls), "changed": changed})
        log.info("revise round %d: %s", r, reports[-1])
    return pieces, reports


def _resample(
    loaded: Loaded, fim: Fim, pieces: list[Piece], infills: list[MusicInfill | None], candidates: int, cfg: SamplingConfig, seed: int, slots: int
) -> list[list[list[int]]]:
    """`candidates` infilled versions of each piece (own tokens), sampled on the decode engine, all rows at once."""
    tok, controls, model = score_tokenizer(loaded, "revise"), loaded.controls, loaded.model
    context = model.cfg.max_seq_len - (controls.width if controls is not None else 0)
    engine = Engine(model, slots, pad_id=tok.pad_id)
    owner: dict[int, tuple[int, MusicInfill]] = {}
    try:
        for i, (p, infill) in enumerate(zip(pieces, infills)):
            if infill is None:
                continue
            try:
                prompt, room = infill.prompt(fim, tok.bos_id, context)
            except DataError as e:  # a bar longer than the context allows beside its neighbours: left as it is
                log.info("revise: piece %d bar %d not resampled (%s)", i, infill.a + 1, e)
                continue
            skip = len(prompt) - prompt.index(fim.mid_id) - 1
            inner = infill.constraint(tok, fim, skip)
            constraint = hide_sentinels(controls.hide(inner) if controls is not None else inner, fim)
            full = controls.insert(prompt, controls.ids(p.conditions)) if controls is not None else prompt
            row_cfg = replace(cfg, max_new_tokens=room, stop_tokens=(tok.eos_id,))
            for k in range(candidates):
                owner[engine.submit(Row(full, row_cfg, seed + 100 * i + k, constraint, head=controls.head if controls else 0))] = (i, infill)
        done = engine.run()
    finally:
        engine.close()
    out: list[list[list[int]]] = [[] for _ in pieces]
    for f in done:
        if f.error is None:
            i, infill = owner[f.id]
            out[i].append(tok.encode_events(infill.complete(tok, f.tokens)))
    return out
