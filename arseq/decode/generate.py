"""`generate`: the engine driven for one call, the shape the CLI, the Python API, evaluation and the
benchmarks use: every prompt a row, all submitted at once, as many slots as `slots` allows (rows join as
others finish), run to the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Callable

from arseq.decode.config import Constraint, Generation, Row, SamplingConfig
from arseq.decode.engine import Engine
from arseq.decode.speculative import SpecStats, Speculative
from arseq.models.inference import Compile
from arseq.models.transformer import Transformer


@dataclass
class Options:
    """What `generate` takes besides prompts and settings.

    seeds: one per prompt (default: cfg.seed + i, else drawn); constraint: shared by all rows (it keeps
    per-row state); guide: one prompt without conditions per prompt (classifier-free guidance at
    cfg.guidance); head: prompt tokens kept in front when the window slides; on_token(row, token, done);
    slots: rows decoded at once (default: all); speculative: a Speculative (draft model or n-gram)."""

    pad_id: int = 0
    seeds: list[int] | None = None
    constraint: Constraint | None = None
    guide: list[list[int]] | None = None
    head: int = 0
    on_token: Callable[[int, int, bool], None] | None = None
    compile: Compile = False
    slots: int | None = None
    speculative: Speculative | None = None


@dataclass
class SpecGeneration(Generation):
    stats: SpecStats | None = None


def generate(model: Transformer, prompts: list[list[int]], cfg: SamplingConfig, **options: Any) -> Generation:
    """Continue every prompt (see Options for the keyword options); the result keeps the prompts' order."""
    names = {f.name for f in fields(Options)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; choose from {', '.join(sorted(names))}")
    opts = Options(**options)
    if not prompts:
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    for name, given in (("seeds", opts.seeds), ("guide prompts", opts.guide)):
        if given is not None and len(given) != len(prompts):
            raise ValueError(f"{len(given)} {name} for {len(prompts)} prompts")
    rows = [_row(i, p, cfg, opts) for i, p in enumerate(prompts)]
    guided = opts.guide is not None and cfg.guidance != 1.0
    slots = opts.slots or len(prompts) * (2 if guided else 1)
    longest = max(len(p) for p in prompts + (opts.guide or []))
    length = longest + cfg.max_new_tokens + 1
    t0 = time.perf_counter()
    engine = Engine(model, slots, length=length, compile=opts.compile, pad_id=opts.pad_id, speculative=opts.speculative)
    try:
        ids = [engine.submit(r) for r in rows]
        done = {f.id: f for f in engine.run()}
    finally:
        engine.close()
    errors = [done[i].error for i in ids if done[i].error]
    if errors:
        raise ValueError(errors[0])
    tokens, stopped = [done[i].tokens for i in ids], [done[i].stopped for i in ids]
    if opts.speculative is None:
        return Generation(tokens, stopped)
    opts.speculative.stats.seconds += time.perf_counter() - t0
    return SpecGeneration(tokens, stopped, opts.speculative.stats)


def _row(i: int, prompt: list[int], cfg: SamplingConfig, opts: Options) -> Row:
    seed = opts.seeds[i] if opts.seeds is not None else (cfg.seed + i if cfg.seed is not None else None)
    on_token = opts.on_token
    stream = (lambda t, end: on_token(i, t, end)) if on_token is not None else None
    guide = opts.guide[i] if opts.guide is not None else None
    return Row(list(prompt), cfg, seed, opts.constraint, guide, opts.head, stream)
