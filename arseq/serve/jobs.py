"""One HTTP request as engine rows, and its samples back as the files the modality writes.

`plan_job` turns a checked request into the rows `arseq generate` would sample for the same options (the
modality's plan, sample i seeded with seed + i, one constraint for the request's rows, guidance prompts and
the conditioned head), so a seeded request gives what `arseq generate --seed` gives. `write_files` writes
the samples into a private temporary folder the server creates, reads them back and deletes it.
"""

from __future__ import annotations

import base64
import mimetypes
import secrets
import shutil
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from arseq.artifacts.checkpoint import Loaded
from arseq.decode import SamplingConfig
from arseq.modalities import Plan, Request, Sample
from arseq.modalities.music.audio import render_wav
from arseq.modalities.plan import SAMPLE_STEM, numbered
from arseq.models.scoring import sequence_nll
from arseq.serve import uploads
from arseq.serve.request_body import Parsed
from arseq.serve.schema import TEXT_MODALITIES
from arseq.tokenizers.score import ScoreTokenizer

MEDIA = {
    ".mid": "audio/midi",
    ".musicxml": "application/vnd.recordare.musicxml+xml",
    ".png": "image/png",
    ".wav": "audio/wav",
    ".fasta": "text/x-fasta",
    ".csv": "text/csv",
    ".txt": "text/plain",
}


@dataclass
class RowSpec:
    prompt: list[int]
    seed: int
    guide: list[int] | None


@dataclass
class JobPlan:
    """What the engine loop needs for one request."""

    rows: list[RowSpec]
    cfg: SamplingConfig
    constraint: Any
    head: int
    plan: Plan
    request: Request
    seed: int
    conditions: list[dict[str, str]]  # per row: the condition values it is sampled with
    scored: bool = True  # whether the answer reports each sample's perplexity (a pass of the model over it)
    parsed: Parsed | None = None  # the request with its seed: planning it again gives this plan (an engine process does)

    @property
    def sampling(self) -> dict[str, Any]:
        return {f.name: getattr(self.cfg, f.name) for f in fields(self.cfg) if f.name != "stop_tokens"}


def plan_job(loaded: Loaded, parsed: Parsed, max_new_tokens_limit: int, scored: bool = True) -> JobPlan:
    """The rows of a request (DataError for options the modality refuses); `scored`: see JobPlan."""
    given = parsed.request.sampling
    seed = given.seed if given.seed is not None else secrets.randbits(31)
    # every row seeded, so an unseeded request can be repeated from its answer
    parsed = replace(parsed, request=replace(parsed.request, sampling=replace(given, seed=seed)))
    planned = uploads.planned(loaded, parsed)
    if planned.cfg.max_new_tokens > max_new_tokens_limit and given.max_new_tokens is None:
        # the modality's own budget past the limit: planned again with the limit as the request's, so that what
        # the plan derives from its budget holds (music's pieces end at a bar line before it); kept in `parsed`,
        # which an engine process plans again
        parsed = replace(parsed, request=replace(parsed.request, sampling=replace(parsed.request.sampling, max_new_tokens=max_new_tokens_limit)))
        planned = uploads.planned(loaded, parsed)
    prompts, guide, cfg = planned.prompts, planned.guide, planned.cfg
    if parsed.token_prompt is not None:  # after BOS and the control tokens the plan put in front
        ids = parsed.token_prompt[1:] if parsed.token_prompt[0] == loaded.tokenizer.bos_id else parsed.token_prompt
        prompts = [p + ids for p in prompts]
        guide = [g + ids for g in guide] if guide is not None else None
    if cfg.max_new_tokens > max_new_tokens_limit:  # a budget no request sets (an image's patches) past the limit
        cfg = replace(cfg, max_new_tokens=max_new_tokens_limit)
    controls = loaded.controls
    head = controls.head if controls is not None else 0
    guide = guide if guide is not None and cfg.guidance != 1.0 else None
    rows = [RowSpec(p, seed + i, guide[i] if guide is not None else None) for i, p in enumerate(prompts)]
    constraint = planned.constraint() if planned.constraint is not None else None
    return JobPlan(rows, cfg, constraint, head, planned.plan, planned.request, seed, planned.conditions, scored, parsed)


def samples_of(loaded: Loaded, job: JobPlan, results: list[tuple[list[int], bool]]) -> list[Sample]:
    """Samples as `arseq generate` makes them: prompts without control tokens, and each one's mean NLL (NaN
    when the answer does not report it: scoring is a pass of the model over the whole sample, in the engine's
    thread, which took ~9 % of it at 16 streams of completions, whose answers carry no perplexity)."""
    tok, controls = loaded.tokenizer, loaded.controls
    prompts = [r.prompt for r in job.rows]
    if job.scored:
        scored = [p + t + ([tok.eos_id] if s else []) for p, (t, s) in zip(prompts, results)]
        nll, count = sequence_nll(loaded.model, scored, start=[len(p) for p in prompts], pad_id=tok.pad_id, head=job.head)
    else:
        nll, count = np.full(len(prompts), np.nan), np.ones(len(prompts), dtype=np.int64)
    return [
        Sample(controls.strip(p) if controls else list(p), list(t), bool(s), float(n / c) if c else float("nan"), dict(cond))
        for p, (t, s), n, c, cond in zip(prompts, results, nll, count, job.conditions)
    ]


def text_of(loaded: Loaded, tokens: list[int]) -> str:
    """Tokens as text where the tokenizer decodes to text (text, proteins), else their names, else ''."""
    tok = loaded.tokenizer
    if loaded.modality.name in TEXT_MODALITIES:
        try:
            out = tok.decode(tokens)
            return out if isinstance(out, str) else ""
        except Exception:  # noqa: BLE001 - a partial multi-byte token: nothing to show yet
            return ""
    name = getattr(tok, "token_name", None)
    return " ".join(name(t) for t in tokens) if name is not None else ""


def prompt_text(loaded: Loaded, job: JobPlan, sample: int) -> str:
    """A sample's prompt as text (OpenAI's `echo`): what the model was given, control tokens left out."""
    prompt = job.rows[sample].prompt
    return text_of(loaded, loaded.controls.strip(prompt) if loaded.controls is not None else prompt)


def text_delta(loaded: Loaded, tokens: list[int], offsets: tuple[int, int], end: int | None = None) -> tuple[str, tuple[int, int]]:
    """The new text of a stream of `tokens` since the last call, and the offsets for the next one: vLLM's
    incremental detokenizing. Decoding the whole list per token made a stream O(n^2); decoding the new tokens
    alone would lose what depends on the tokens before them (a word's leading space, a character split over
    tokens), so the tokens since the last emitted text are decoded after those of the emission before (the
    prefix), and the text past the prefix's is new. Nothing is emitted while a multi-byte character is incomplete.
    `end`: the stream so far is `tokens[:end]` (a caller replaying a finished list need not copy its heads)."""
    prefix, read = offsets
    end = len(tokens) if end is None else end
    before = text_of(loaded, tokens[prefix:read])
    text = text_of(loaded, tokens[prefix:end])
    if len(text) <= len(before) or text.endswith("\ufffd"):
        return "", offsets
    return text[len(before) :], (read, end)


def write_files(loaded: Loaded, job: JobPlan, samples: list[Sample]) -> list[dict[str, Any]]:
    """The modality's files for these samples (and a WAV of each piece of music), as base64 with names and media
    types; written in a private temporary folder that is deleted before returning."""
    tmp = Path(tempfile.mkdtemp(prefix="arseq-serve-"))
    try:
        out = tmp / "samples"
        out.mkdir()
        request = replace(job.request, out=out, overwrite=False)
        written = [Path(p) for p in loaded.modality.write(loaded.tokenizer, samples, request, job.plan)]
        written += _audio(loaded, samples, out)
        files = []
        for path in sorted(set(written), key=lambda p: (p.parent != out, str(p))):
            name = path.relative_to(out).as_posix() if path.is_relative_to(out) else path.name
            media = MEDIA.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files.append({"name": name, "media_type": media, "data": base64.b64encode(path.read_bytes()).decode("ascii")})
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _audio(loaded: Loaded, samples: list[Sample], out: Path) -> list[Path]:
    """A WAV beside each piece's MIDI file (music only)."""
    tok = loaded.tokenizer
    if loaded.modality.name != "music" or not isinstance(tok, ScoreTokenizer):
        return []
    paths = []
    for i, s in enumerate(samples):
        path = out / f"{numbered(SAMPLE_STEM, i)}.wav"  # beside the music writer's sample_000.mid
        path.write_bytes(render_wav(tok.decode_events(s.prompt + s.tokens), tok.ppq))
        paths.append(path)
    return paths
