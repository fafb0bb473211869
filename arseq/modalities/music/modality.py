"""Music: scores (MIDI, MusicXML, Humdrum, ABC) as REMI-style tokens; Bach chorales out of the box.

Reading parses files in worker processes (`data.workers`; music21 needs ~0.1-0.5 s a score, MIDI files
are read from their bytes in ~1 ms unless `midi_reader: music21`); each worker parses, encodes and finds the
piece's conditions, and hands back only token ids and names, so scores are never pickled. Generated pieces are written as
.mid (one distinct program per part, so voices survive a MIDI round trip), .musicxml and a piano-roll
.png. A grammar constraint keeps sampled event order well-formed, so every sample parses back.

music21 is imported only inside functions: a cached `arseq prepare` or `train` never pays for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeAlias

import numpy as np

from arseq.modalities import (
    Controls,
    DataError,
    EvalInputs,
    Example,
    Modality,
    Plan,
    Request,
    Sample,
    Skipped,
    TokenSeqs,
)
from arseq.modalities.infill_ranges import check_fim
from arseq.modalities.music import performance as perf
from arseq.modalities.music import writing
from arseq.modalities.music.conditions import FIELDS, piece_conditions, transposed_keys
from arseq.modalities.music.corpus import COMPOSERS, bach_chorales, music21_composers
from arseq.modalities.music.grammar import GrammarConstraint, sample_budget
from arseq.modalities.music.infill import MusicInfill, load_infill
from arseq.modalities.music.metrics import key_scale, score_metrics
from arseq.modalities.music.reading import (
    MIDI_READERS,
    SUFFIXES,
    load_piece,
    prompt_tokens,
    read_in_parallel,
    roundtrip_report,
)
from arseq.tokenizers.base import Tokenizer
from arseq.tokenizers.performance import PerformanceTokenizer
from arseq.tokenizers.score import PITCH, ScoreTokenizer

MusicTokenizer: TypeAlias = ScoreTokenizer | PerformanceTokenizer  # modality.tokenizer: score or performance

# Nucleus sampling slightly cooled: at T = 1 the 0.8 M-parameter CPU model's samples were 90 % in key (held-out
# chorales: 95 %), with these 92 %, their pitch-class entropy then matching the data's (configs/music/bach_chorales.yaml).
SAMPLING_DEFAULTS = {"temperature": 0.9, "top_p": 0.95}
# prepare suggests the performance tokenizer when more than this share of notes is off the score grid
OFF_GRID_SUGGEST = 0.2
# data.source names: pieces from music21's installed corpus (no network)
SOURCES: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "bach_chorales": bach_chorales,
    "music21_composers": music21_composers,
}


def _music_tokenizer(tokenizer: Tokenizer) -> MusicTokenizer:
    """The tokenizer a hook is given (the plugin API says any `Tokenizer`), as the one this modality makes."""
    if not isinstance(tokenizer, (ScoreTokenizer, PerformanceTokenizer)):
        raise TypeError(f"the music modality works with a score or performance tokenizer, not {type(tokenizer).__name__}")
    return tokenizer


@dataclass
class MusicGenerate:
    """music options (samples use temperature 0.9 and top_p 0.95 unless given: cutting the unlikely tail keeps small models in key)

    Args:
        bars: exactly N new bars per sample
        min_bars: without --bars, a sample ends no earlier than after this many new bars (the shortest Bach chorales run
            8), and one still going 128 tokens before its budget (--max-new-tokens) ends with the bar it is in
        prompt_bars: with --prompt FILE (MIDI/MusicXML/...): continue after its first N bars
        keep_bars: with --prompt FILE: keep these bars (e.g. 1-4,9-12) and regenerate the others (5-8) in every part,
            in the piece's meter and key, joining the bars after them; needs a model trained with data.fim_rate > 0
    """

    bars: int | None = None
    min_bars: int = 8
    prompt_bars: int | None = None
    keep_bars: str | None = None


class MusicModality(Modality):
    name = "music"
    tokenizer_kinds = {ScoreTokenizer.kind: ScoreTokenizer, PerformanceTokenizer.kind: PerformanceTokenizer}
    suffixes = SUFFIXES
    condition_fields = FIELDS

    def __init__(
        self,
        transpose: list[int] = [-5, 6],  # noqa: B006  (never mutated; jsonargparse shows it as the default)
        ppq: int = 24,
        max_parts: int = 16,
        velocity: bool = False,
        tempo: bool = True,
        grace: bool = True,
        max_bar_quarters: int = 16,
        max_dur_quarters: int = 16,
        workers: int | None = None,
        composers: list[str] | None = None,
        per_composer: int | None = None,
        midi_reader: str = "symusic",
        tokenizer: str = "score",
    ):
        if len(transpose) != 2 or transpose[0] > transpose[1]:
            raise DataError(f"modality.transpose must be [low, high] semitones, got {transpose}")
        self.transpose = (int(transpose[0]), int(transpose[1]))
        self.options: dict[str, Any] = dict(
            ppq=ppq,
            max_parts=max_parts,
            velocity=velocity,
            tempo=tempo,
            grace=grace,
            max_bar_quarters=max_bar_quarters,
            max_dur_quarters=max_dur_quarters,
        )
        # None: data.workers of the run (the usable cores by default); a number here overrides it
        self.workers = None if workers is None else max(1, workers)
        if midi_reader not in MIDI_READERS:
            raise DataError(f"modality.midi_reader must be one of {', '.join(MIDI_READERS)}, got {midi_reader!r}")
        self.midi_reader = midi_reader
        # MIDI reading 3: both readers pair note-ons as music21 does; music21's reads on the tokenizer's grid
        # and skips its notation step (`music21_midi`)
        self.reading_version = "midi-3"
        if per_composer is not None and per_composer < 1:
            raise DataError(f"modality.per_composer must be a positive integer, got {per_composer}")
        # data.source music21_composers: which corpus folders, and at most how many works of each
        self.composers, self.per_composer = composers, per_composer
        if tokenizer not in self.tokenizer_kinds:
            raise DataError(f"modality.tokenizer must be score or performance, got {tokenizer!r}")
        # built from options alone, so `augment` has it; performance: MIDI as played (`performance`)
        self.tokenizer: MusicTokenizer = ScoreTokenizer(**self.options) if tokenizer == "score" else PerformanceTokenizer()

    # ---- data ---------------------------------------------------------------------------------
    def demo_config(self, tmp_dir: Path) -> dict[str, Any]:
        """Five chorales copied from music21's corpus, transposition kept small."""
        import shutil

        for _, path in bach_chorales()[:5]:
            shutil.copy(path, tmp_dir / Path(path).name)
        return {"data": {"paths": str(tmp_dir)}, "modality": {"transpose": [-1, 1], "workers": 1}}

    def build_tokenizer(self, files: list[Path], source: str | None) -> MusicTokenizer:
        return self.tokenizer

    def read(self, files: list[Path], source: str | None, tokenizer: Tokenizer, check_roundtrip: bool = False) -> Iterator[Example | Skipped]:
        tokenizer = _music_tokenizer(tokenizer)
        if source not in (None, *SOURCES):
            raise DataError(f"data.source {source!r}: the music modality knows {' and '.join(map(repr, SOURCES))} (or give data.paths)")
        if (self.composers is not None or self.per_composer is not None) and source != "music21_composers":
            raise DataError("modality.composers and modality.per_composer choose works of data.source music21_composers")
        if source == "music21_composers":
            items = music21_composers(tuple(self.composers or COMPOSERS), self.per_composer)
        else:
            items = SOURCES[source]() if source is not None else [(str(f), str(f)) for f in files]
        played = isinstance(tokenizer, PerformanceTokenizer)
        jobs = [(name, path, tokenizer.to_dict(), check_roundtrip) + (() if played else (self.midi_reader,)) for name, path in items]
        loader = perf.load_performance if played else partial(load_piece, voices=True) if source == "bach_chorales" else None
        for name, tokens, exact, info, conditions, reason in read_in_parallel(jobs, self.workers, loader):
            if reason is not None:
                yield Skipped(name, reason)
            else:
                yield Example(tokens, name, exact, info, conditions)

    def augment(self, tokens: np.ndarray, rng: np.random.Generator, controls: Controls | None = None) -> np.ndarray:
        """Transpose the window by a random number of semitones in range, keeping every pitch in MIDI range.
        A window holding a piece's conditions (control ids, past the vocabulary) moves its key token along,
        by a shift that lands on a key training has seen (so the unknown key token never comes to mean
        "a key too rare to name"); without `controls` such a window is kept as it is."""
        own = tokens < self.tokenizer.vocab_size
        if not own.all() and controls is None:
            return tokens
        span = self.tokenizer.pitch_span(tokens[own])
        if span is None:
            return tokens
        shifts: Sequence[int] = range(max(self.transpose[0], -span[0]), min(self.transpose[1], 127 - span[1]) + 1)
        keys: list[tuple[int, str]] = []  # (position, key) of the window's known key tokens
        if controls is not None and "key" in controls.fields and not own.all():
            values = tuple(controls.fields["key"])
            keys = [(int(i), v) for i in np.flatnonzero(~own) if (v := controls.value_of("key", int(tokens[i]))) is not None]
            shifts = [s for s in shifts if all(transposed_keys(values, s)[values.index(v)] is not None for _, v in keys)]
        if not shifts:
            return tokens
        shift = int(shifts[int(rng.integers(len(shifts)))])
        if shift == 0:
            return tokens
        out = tokens.copy()
        out[own] = self.tokenizer.transpose(tokens[own], shift)
        for i, v in keys:
            moved = transposed_keys(values, shift)[values.index(v)]
            if controls is not None and moved is not None:  # always: keys are read from controls, shifts keep known keys
                out[i] = controls.value_id("key", values[moved])
        return out

    def fim_cuts(self, tokenizer: Tokenizer, tokens: np.ndarray, start: int = 0) -> np.ndarray:
        """Bar lines: fill-in-the-middle learns whole bars, the unit `--keep-bars` regenerates. Performance
        tokens have no bars: any token (the default)."""
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return super().fim_cuts(tokenizer, tokens, start)
        return np.flatnonzero(np.asarray(tokens) == tokenizer.bar_id)

    # ---- generation ---------------------------------------------------------------------------
    generate_options = MusicGenerate
    # Asked for a key, the quick start's model writes in it 54 % of the time unguided and 92 % with guidance 2
    # (benchmarks/bench_conditioning.py, README), at twice the rows per pass: worth it whenever --cond is given.
    conditioned_sampling = {"guidance": 2.0}

    def plan(self, tokenizer: Tokenizer, request: Request) -> Plan:
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return perf.plan(tokenizer, request, SAMPLING_DEFAULTS)
        opts: MusicGenerate = request.options
        sampling: dict[str, Any] = dict(SAMPLING_DEFAULTS)
        if opts.bars is not None and opts.bars < 1:
            raise DataError(f"--bars must be >= 1, got {opts.bars}")
        if opts.min_bars < 0:
            raise DataError(f"--min-bars must be >= 0, got {opts.min_bars}")
        if opts.keep_bars is not None:
            return self._infill_plan(tokenizer, request, sampling, opts.keep_bars)
        least = opts.bars if opts.bars is not None else opts.min_bars
        sampling["max_new_tokens"] = sample_budget(opts.bars, least, request.item_tokens)
        if request.prompt:
            prompt = list(prompt_tokens(tokenizer, request.prompt_file(), opts.prompt_bars, self.midi_reader))
        elif opts.prompt_bars is not None:
            raise DataError("--prompt-bars needs --prompt FILE")
        else:
            prompt = [tokenizer.bos_id]
        budget = request.sampling.max_new_tokens or sampling["max_new_tokens"]
        constraint = partial(GrammarConstraint, tokenizer, opts.bars, least, budget)
        return Plan([list(prompt) for _ in range(request.num_samples)], sampling, constraint=constraint)

    def _infill_plan(self, tokenizer: ScoreTokenizer, request: Request, sampling: dict[str, Any], keep_bars: str) -> Plan:
        """--keep-bars: the prompt file's piece with its other bars to regenerate (arseq.modalities.music.infill)."""
        opts: MusicGenerate = request.options
        fim = check_fim(request.fim, "--keep-bars")
        if not request.prompt:
            raise DataError("--keep-bars needs --prompt FILE: the piece whose other bars are regenerated")
        if opts.bars is not None or opts.prompt_bars is not None:
            raise DataError("--keep-bars decides the bars to write; drop --bars and --prompt-bars")
        infill = load_infill(tokenizer, request.prompt_file(), keep_bars)
        prompt, room = infill.prompt(fim, tokenizer.bos_id, request.context or 10**9)
        skip = len(prompt) - prompt.index(fim.mid_id) - 1  # SPM prompts end with the prefix
        sampling["max_new_tokens"] = room
        known = request.condition_values  # a conditioned model: the piece's own key and meter, where it knows them
        shown = {k: v for k, v in piece_conditions(infill.events).items() if v in known.get(k, ())}
        return Plan(
            [list(prompt) for _ in range(request.num_samples)],
            sampling,
            constraint=partial(infill.constraint, tokenizer, fim, skip),
            parsed=infill,
            conditions=[dict(shown) for _ in range(request.num_samples)] if known else None,
        )

    def fit_prompt(self, tokenizer: Tokenizer, prompt: list[int], limit: int) -> tuple[list[int], str]:
        """The header and the first whole bars that fit, then a bar line (as --prompt-bars does)."""
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return super().fit_prompt(tokenizer, prompt, limit)
        bar_at = [i for i, t in enumerate(prompt) if t == tokenizer.bar_id]
        bars = max((k for k in range(1, len(bar_at)) if bar_at[k] + 1 <= limit), default=None)
        if bars is None:
            raise DataError(f"the prompt's first bar does not fit in {limit} tokens; choose a shorter prompt")
        return prompt[: bar_at[bars]] + [tokenizer.bar_id], f"its first {bars} of {len(bar_at)} bars"

    def show(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> str:
        """Each piece's figures and its tokens by name."""
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return perf.show_samples(tokenizer, samples)
        infill = plan.parsed if isinstance(plan.parsed, MusicInfill) else None
        out = []
        for i, s in enumerate(samples):
            ev = infill.complete(tokenizer, s.tokens) if infill is not None else tokenizer.decode_events(s.prompt + s.tokens)
            out.append(f"# sample {i}: {len(ev.bars)} bars, {len(ev.notes)} notes, {ev.num_parts} parts, {ev.repairs} repairs, nll {s.nll:.3f}\n")
            out.append(" ".join(tokenizer.token_name(t) for t in (tokenizer.encode_events(ev) if infill else s.prompt + s.tokens)) + "\n")
        return "".join(out)

    def output_files(self, tokenizer: Tokenizer, request: Request) -> list[Path]:
        """Each sample's .mid, .musicxml and piano-roll .png (a performance: .mid and .png)."""
        if isinstance(_music_tokenizer(tokenizer), PerformanceTokenizer):
            return perf.output_files(request)
        return writing.output_files(request)

    def write(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[Path]:
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return perf.write_samples(tokenizer, samples, request)
        return writing.write_samples(tokenizer, samples, request, plan)

    # ---- reporting ----------------------------------------------------------------------------
    def summarize(self, tokenizer: Tokenizer, examples: list[Example]) -> dict[str, Any]:
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return perf.summarize(examples)
        notes = sum(e.info.get("notes", 0) for e in examples)
        tokens = sum(len(e.tokens) for e in examples)
        off_grid = sum(e.info.get("off_grid", 0) for e in examples) / max(1, notes)
        suggestion = (
            {
                "suggestion": f"{off_grid:.0%} of the notes were moved onto the score grid: these look like "
                "recorded performances; modality.tokenizer: performance keeps their timing and dynamics"
            }
            if off_grid > OFF_GRID_SUGGEST
            else {}
        )
        return {
            "num_notes": int(notes),
            "tokens_per_note": round(tokens / max(1, notes), 3),
            "notes_per_piece": round(notes / max(1, len(examples)), 1),
            "quantized_notes": int(sum(e.info.get("quantized", 0) for e in examples)),
            "dropped_notes": int(sum(e.info.get("dropped", 0) for e in examples)),
            "grace_notes": int(sum(e.info.get("grace", 0) for e in examples)),
            # notes whose onset or duration was moved onto the grid: a score tokenization loses their timing
            "off_grid_share": round(off_grid, 4),
            **roundtrip_report(examples),
            **suggestion,
        }

    def condition_values(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: Sequence[Example] = ()) -> list[dict[str, str]]:
        """Key and meter as the samples show them (the composer is not in the notes)."""
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return [{"key": perf.find_key(perf.histogram(tokenizer.decode(s)))[2]} for s in sequences]
        return [piece_conditions(tokenizer.decode_events(s)) for s in sequences]

    def metrics(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: TokenSeqs = ()) -> Mapping[str, float | None]:
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return perf.timing_metrics([tokenizer.decode(s) for s in sequences])
        return score_metrics([tokenizer.decode_events(s) for s in sequences])

    def evaluate(self, tokenizer: Tokenizer, report: EvalInputs) -> dict[str, Any]:
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):  # notes: note-on ids
            is_pitch = np.zeros(tokenizer.vocab_size, dtype=bool)
            is_pitch[tokenizer.on0 : tokenizer.off0] = True
        else:
            is_pitch = tokenizer.types == PITCH
        notes = sum(int(is_pitch[np.asarray(v[1:], dtype=np.int64)].sum()) for v in report.val)
        return {
            "nll_per_note": report.total_nll / max(1, notes),
            "bits_per_note": report.total_nll / max(1, notes) / math.log(2),
            "tokens_per_note": report.num_predicted / max(1, notes),
        }

    def plausible_mistake(self, tokenizer: Tokenizer, tokens: np.ndarray, position: int, rng: np.random.Generator) -> int | None:
        """A note a semitone off (up or down at random); None for tokens that are not pitches."""
        tokenizer = _music_tokenizer(tokenizer)
        t = int(tokens[position])
        if isinstance(tokenizer, PerformanceTokenizer) or not 0 <= t < tokenizer.vocab_size or tokenizer.types[t] != PITCH:
            return None
        value, step = int(tokenizer.values[t]), int(rng.choice((-1, 1)))
        return tokenizer.start[PITCH] + (value + step if 0 <= value + step < 128 else value - step)

    def error_predicate(self, tokenizer: Tokenizer, reference: list[np.ndarray]) -> Callable[[Sequence[int]], np.ndarray] | None:
        """Besides grammar violations (the constraint): a pitch outside the key of the piece (as `in_key_rate` judges it)."""
        tokenizer = _music_tokenizer(tokenizer)
        if isinstance(tokenizer, PerformanceTokenizer):
            return None

        def out_of_key(tokens: Sequence[int]) -> np.ndarray:
            ids = np.asarray(tokens, dtype=np.int64)
            pitch = (ids >= 0) & (ids < tokenizer.vocab_size)
            pitch[pitch] = tokenizer.types[ids[pitch]] == PITCH
            ev = tokenizer.decode_events(list(tokens))
            if not pitch.any() or not ev.notes:
                return np.zeros(len(ids), dtype=bool)
            scale = np.array(sorted(key_scale(ev)))
            return pitch & ~np.isin(tokenizer.values[np.clip(ids, 0, tokenizer.vocab_size - 1)] % 12, scale)

        return out_of_key
