"""The public API for writing a modality: built-in modalities use exactly this and nothing private.

A modality turns files into token sequences and generated tokens back into files. Everything else —
caching, splitting, batching, training, sampling, evaluation — is shared core code. Subclass
`Modality` (an ABC), give it a `name`, implement its three abstract methods `build_tokenizer`, `read` and
`write`, and override any of the optional hooks, grouped below by the verb that calls them. Constructor arguments are the modality's options: they appear in YAML under
`modality:` (typed, checked, overridable as `--modality.OPTION`) and are saved with checkpoints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import numpy as np

# Re-exported: the plugin API is this module (and `arseq.modalities`, which re-exports it).
from arseq.atomic import OutputFiles  # noqa: F401
from arseq.conditioning import Controls
from arseq.decode.config import Constraint, SamplingConfig  # noqa: F401
from arseq.decode.infill import Fim, MiddleView  # noqa: F401
from arseq.decode.row_state import RowState
from arseq.errors import DataError
from arseq.modalities.plan import Plan, Request, SamplingOptions  # noqa: F401
from arseq.models.scoring import TokenSeqs  # noqa: F401  (token id lists or arrays: `metrics`' reference)
from arseq.tokenizers.base import Tokenizer


class PrefixCounts:
    """Running sums of a per-token value over each row's tokens after the first `skip` (e.g. residues or
    bases so far), for constraints: rows that grow are counted incrementally, rows cut back are too."""

    def __init__(self, values: Sequence[int], skip: int = 0):
        self.values, self.skip = list(values), skip
        self.rows: RowState[list[int]] = RowState()  # per row: sums[k] over row[skip:skip + k]

    def __call__(self, row: list[int]) -> int:
        sums = self.rows.get(row) or [0]
        del sums[max(0, len(row) - self.skip) + 1 :]
        for t in row[self.skip + len(sums) - 1 :]:
            sums.append(sums[-1] + self.values[t])
        self.rows.set(row, sums)
        return sums[-1]


@dataclass
class Example:
    """One item of a dataset (document, piece, image, protein) as token ids, specials included."""

    tokens: Sequence[int] | np.ndarray
    name: str = ""
    exact: bool | None = None  # decode(encode(x)) reproduced x; None when not checked
    info: dict[str, float] = field(default_factory=dict)  # per-item counts for `summarize`
    conditions: dict[str, str] = field(default_factory=dict)  # field -> value, for `condition_fields`


@dataclass
class Skipped:
    """An input that could not be used, and why (reported by `arseq prepare`; the run goes on)."""

    file: str
    reason: str


@dataclass
class Sample:
    """One generated sequence."""

    prompt: list[int]
    tokens: list[int]  # the continuation, stop token excluded
    stopped: bool  # ended on a stop token rather than the length limit
    nll: float  # mean negative log-likelihood (nats) per generated token under the model
    conditions: dict[str, str] = field(default_factory=dict)  # the condition values it was sampled with

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll))


class Modality(ABC):
    """Base class of every modality. Subclasses are registered by `name`."""

    name: ClassVar[str] = ""
    tokenizer_kinds: ClassVar[dict[str, type[Tokenizer]]] = {}  # Tokenizer.kind -> class, to rebuild from state
    suffixes: ClassVar[tuple[str, ...]] = ()  # file suffixes taken when a folder is given; () = all
    # Fields a model can be conditioned on (name -> what it is, for docs and errors). `read` puts each item's
    # values in `Example.conditions`; the core reserves control tokens for the values the data has
    # (arseq.conditioning). Empty: this modality has none.
    condition_fields: ClassVar[dict[str, str]] = {}
    # True when `read(files)` yields exactly what `read([f])` for each file yields, in file order, and keeps no
    # state: `prepare` then reads the files in `data.workers` processes (a modality that parallelises its
    # own reading, like music, image and protein, reads `arseq.parallel.configured_workers()` instead).
    reads_files_independently: ClassVar[bool] = False
    # Part of the data cache key: changed when `read` makes something else of the same files and options, so
    # entries made by the old reading are not reused. Empty: the key is as it always was.
    reading_version: str = ""

    # ---- data (required) -------------------------------------------------------------------------
    @abstractmethod
    def build_tokenizer(self, files: list[Path], source: str | None) -> Tokenizer:
        """Make the tokenizer: fit it on the training files, or build it from options alone."""

    @abstractmethod
    def read(self, files: list[Path], source: str | None, tokenizer: Tokenizer, check_roundtrip: bool = False) -> Iterator[Example | Skipped]:
        """Yield one Example per usable item and one Skipped per unusable file or record."""

    # ---- generation (write required) -------------------------------------------------------------
    # A dataclass of this modality's generate/evaluate options (fields with defaults; the docstring's
    # `Args:` section is their --help). None: no options of its own. See arseq.modalities.plan.
    generate_options: ClassVar[type | None] = None
    # Sampling defaults for conditioned samples, over `plan`'s (options given still win): e.g. guidance,
    # where a model follows its conditions much more closely with it (README: music keys, digits).
    conditioned_sampling: ClassVar[dict[str, Any]] = {}

    def plan(self, tokenizer: Tokenizer, request: Request) -> Plan:
        """Turn a request into prompts (one per sample), sampling defaults, a constraint and a streamer.

        Parse the prompt here, once; check `request.options` and raise DataError naming the flag. Default:
        BOS alone, nothing else."""
        return Plan([[tokenizer.bos_id] for _ in range(request.num_samples)])

    @abstractmethod
    def write(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[Path]:
        """Write samples as files people use under `request.out` (always set here); return the paths. Stage
        them in an `OutputFiles` so nothing is overwritten unless `request.overwrite`."""

    def output_files(self, tokenizer: Tokenizer, request: Request) -> list[Path]:
        """The files `write` will write for `request` whose names do not depend on the samples. The core refuses
        existing ones before sampling (unless `request.overwrite`), so a refusal costs no sampling time. Default:
        none beyond what the core finds itself (`out`, and files named like sample_000.* where the samples go)."""
        return []

    def show(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> str:
        """The samples as text for a terminal: what `arseq generate` without --out prints on stdout (the core
        prints it; a modality never prints, so Python callers stay quiet). Default: each sample's token ids."""
        return "".join(f"# sample {i}: nll {s.nll:.3f}\n{' '.join(map(str, s.prompt + s.tokens))}\n" for i, s in enumerate(samples))

    def fit_prompt(self, tokenizer: Tokenizer, prompt: list[int], limit: int) -> tuple[list[int], str]:
        """Cut a prompt longer than the model's context to at most `limit` tokens; say what was kept.

        Default: BOS and the newest tokens (what the next token depends on most). Override to cut at
        units of the data (bars, image rows) so the prompt stays well-formed."""
        kept = [tokenizer.bos_id, *prompt[len(prompt) - limit + 1 :]]
        return kept, f"BOS and its newest {limit - 1} tokens"

    # ---- training --------------------------------------------------------------------------------
    def augment(self, tokens: np.ndarray, rng: np.random.Generator, controls: Controls | None = None) -> np.ndarray:
        """Augment one training window (e.g. transpose music). Must keep the shape. `controls`: a conditioned
        model's condition tokens (in the window's head), for an augmentation that changes a condition (a
        transposition changes the key): read and replace them by field and value (`Controls.read`,
        `Controls.value_id`), never by id arithmetic."""
        return tokens

    def fim_cuts(self, tokenizer: Tokenizer, tokens: np.ndarray, start: int = 0) -> np.ndarray:
        """Where fill-in-the-middle training may cut a run of an item's tokens (`data.fim_rate`): positions i
        splitting tokens[:i] | tokens[i:], the run's ends always allowed; tokens[0] is the item's token number
        `start` (its BOS is 0). Cut at the units people regenerate (bars, image rows), so the middles learned
        are the ones infilling asks for. Default: every token."""
        return np.arange(len(tokens) + 1)

    # ---- reporting -------------------------------------------------------------------------------
    def summarize(self, tokenizer: Tokenizer, examples: list[Example]) -> dict[str, Any]:
        """Extra keys for `arseq prepare`'s JSON (e.g. tokens_per_note)."""
        return {}

    def metrics(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: TokenSeqs = ()) -> Mapping[str, float | None]:
        """Descriptive metrics of token sequences; computed on data and on samples, same keys (None where there
        is nothing to measure). `reference` holds the training items (id lists or arrays), for figures that
        compare with them (composition, novelty)."""
        return {}

    def condition_values(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: Sequence[Example] = ()) -> list[dict[str, str]]:
        """The condition values each token sequence shows, where the modality can read them back (a
        generated piece's analysed key, an image's class by a classifier fitted on `reference`: training
        items with their `conditions`): `evaluate --cond` reports how often samples obey. Default: none."""
        return [{} for _ in sequences]

    def evaluate(self, tokenizer: Tokenizer, report: EvalInputs) -> dict[str, Any]:
        """Extra keys for `arseq evaluate`'s JSON (baselines, bits per dim, NLL per note...)."""
        return {}

    # ---- error analysis (`arseq analyze drift`) ---------------------------------------------------
    def plausible_mistake(self, tokenizer: Tokenizer, tokens: np.ndarray, position: int, rng: np.random.Generator) -> int | None:
        """A wrong token a near miss would put at `tokens[position]` (a note a semitone off, a neighbouring
        pixel value); None where this modality knows none. Default: none (only random and model-chosen errors)."""
        return None

    def error_predicate(self, tokenizer: Tokenizer, reference: list[np.ndarray]) -> Callable[[Sequence[int]], np.ndarray] | None:
        """Errors beyond what `constraint` forbids, for free-running samples: a function from a whole token
        sequence to a bool per token (True: wrong by this modality's own rule, e.g. out of key). `reference`
        holds the training items (e.g. to know which words exist). Default None: the constraint alone decides."""
        return None

    # ---- testing ---------------------------------------------------------------------------------
    def demo_config(self, tmp_dir: Path) -> dict[str, Any] | None:
        """Config overrides for a tiny smoke run (seconds on a CPU), or None when there is none.

        Write a few small input files under `tmp_dir` (or name a built-in `source`) and return the
        sections to merge over the smoke-test config, e.g. `{"data": {"paths": str(tmp_dir / "x.fa")}}`;
        `modality`, `model` and `trainer` keys are merged too. The parity test runs prepare, train,
        generate and evaluate on it for every registered modality, plugins included.
        """
        return None

    # ---- plumbing --------------------------------------------------------------------------------
    def load_tokenizer(self, state: dict[str, Any]) -> Tokenizer:
        """Rebuild this modality's tokenizer from `Tokenizer.to_dict()` state."""
        kind = state.get("kind")
        if kind not in self.tokenizer_kinds:
            raise DataError(f"tokenizer kind {kind!r} is not one of {self.name} modality's {sorted(self.tokenizer_kinds)}")
        return self.tokenizer_kinds[kind].from_dict(state)


@dataclass
class EvalInputs:
    """What the core hands `Modality.evaluate`: the measured loss and the token streams it came from."""

    loss: float  # mean NLL, nats per predicted token
    total_nll: float  # summed over all predicted tokens
    num_predicted: int
    item_nll: np.ndarray  # per validation item: summed NLL of its predicted tokens
    item_count: np.ndarray  # per validation item: number of predicted tokens
    train: list[np.ndarray]  # training items' tokens
    val: list[np.ndarray]  # validation items' tokens
