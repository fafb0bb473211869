"""Score samples as files people use: per sample a .mid, a .musicxml and a piano-roll .png (a performance's:
arseq.modalities.music.performance), and one line on the pieces the token budget cut short (they stop
mid-phrase, and nothing else would say why)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from arseq.modalities import OutputFiles, Plan, Request, Sample
from arseq.modalities.music.grammar import TOKENS_PER_BAR
from arseq.modalities.music.infill import MusicInfill
from arseq.modalities.music.render import piano_roll
from arseq.tokenizers.score import Events, ScoreTokenizer

log = logging.getLogger(__name__)
# `--out NAME.SUFFIX` with one of these names files (NAME.mid, NAME.musicxml, NAME.png), not a folder
OUT_SUFFIXES = (".mid", ".midi", ".musicxml", ".mxl", ".xml", ".png")


def output_files(request: Request) -> list[Path]:
    """What `write_samples` writes for `request`: each sample's .mid, .musicxml and .png."""
    return [stem.with_suffix(s) for stem in request.out_stems(request.num_samples, OUT_SUFFIXES) for s in (".mid", ".musicxml", ".png")]


def write_samples(tokenizer: ScoreTokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[Path]:
    """Each sample's files under `request.out` (or named by it: `--out chorale.mid`); an infilled piece's piano
    roll marks the regenerated bars."""
    files = OutputFiles(overwrite=request.overwrite, protect=[request.prompt])
    infill = plan.parsed if isinstance(plan.parsed, MusicInfill) else None
    marked = range(infill.a, infill.b) if infill is not None else None
    for s, stem in zip(samples, request.out_stems(len(samples), OUT_SUFFIXES)):
        ev = infill.complete(tokenizer, s.tokens) if infill is not None else tokenizer.decode_events(s.prompt + s.tokens)
        score = tokenizer.to_score(ev)
        files.add(stem.with_suffix(".mid"), partial(_write_midi, score))
        files.add(stem.with_suffix(".musicxml"), partial(tokenizer.write_musicxml, score))
        files.add(stem.with_suffix(".png"), partial(_write_piano_roll, ev, tokenizer.ppq, marked))
    written = files.commit()
    if infill is None and (cut := sum(not s.stopped for s in samples)):
        budget = request.sampling.max_new_tokens or plan.sampling.get("max_new_tokens")
        limit = f"the {budget:,}-token budget" if budget else "their token budget"
        bars = getattr(request.options, "bars", None)
        hint = f"--bars {bars} takes about {TOKENS_PER_BAR * bars:,} tokens" if bars else "--bars N writes N bars"
        log.info(f"{cut} of {len(samples)} pieces reached {limit} before their end (--max-new-tokens raises it; {hint})")
    return written


def _write_midi(score: Any, path: Path) -> None:
    score.write("midi", fp=str(path))


def _write_piano_roll(events: Events, ppq: int, marked: range | None, path: Path) -> None:
    piano_roll(events, ppq, marked=marked).save(path, format="PNG")
