"""What one generate/evaluate call asks of a modality (`Request`) and what the modality answers (`Plan`).

Options are typed dataclasses: the core's (`SamplingOptions`) and each modality's own
(`Modality.generate_options`). The command line builds its flags from them, YAML configs and the Python
API fill the same fields. A sampling option left at None means "the modality's default, else the core's",
so nothing ever asks whether a flag was typed: a value given wins, whatever its source.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from arseq.conditioning import split_condition
from arseq.decode.config import Constraint, SamplingConfig
from arseq.decode.infill import Fim
from arseq.errors import DataError

SAMPLE_STEM = "sample"  # in an --out folder, sample i's files are sample_000.mid, sample_001.png, ...


def numbered(stem: str, i: int) -> str:
    """The name (without suffix) of sample i's files: sample_000, or chorale_012 beside --out chorale.mid."""
    return f"{stem}_{i:03d}"


@dataclass
class SamplingOptions:
    """Sampling (unset: the modality's default, else the core's)

    Args:
        max_new_tokens: tokens to generate per sample at most (core default 256)
        min_new_tokens: no stop token before this many new tokens (core default 0)
        temperature: 0 = greedy (core default 1.0)
        top_k: sample among the k likeliest tokens
        top_p: sample among the likeliest tokens holding this probability mass
        min_p: drop tokens less likely than min_p times the likeliest
        repetition_penalty: > 1 discourages tokens already present (core default 1.0)
        seed: same seed, same samples, at any batch size (sample i is seeded with seed + i)
        guidance: classifier-free guidance scale for conditioned samples (--cond, --label): > 1 follows the
            conditions more closely, at two model rows per sample (core default 1.0: off; music and images
            guide conditioned samples at 2 unless told otherwise)
    """

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    guidance: float | None = None

    def resolve(self, defaults: dict[str, Any], stop_tokens: tuple[int, ...]) -> SamplingConfig:
        """The SamplingConfig to sample with: the core's defaults, then the modality's, then these values."""
        unknown = set(defaults) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"a modality's sampling defaults name unknown option(s): {', '.join(sorted(unknown))}")
        given = {k: v for k, v in asdict(self).items() if v is not None}
        return SamplingConfig(**{**defaults, **given}, stop_tokens=stop_tokens)


@dataclass(frozen=True)
class Request:
    """One generate/evaluate call, typed. `options` is an instance of the modality's `generate_options`."""

    num_samples: int = 1
    prompt: str | None = None  # text for text models, a file for music, images, proteins (FASTA)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    options: Any = None
    conditions: list[str] = field(default_factory=list)  # FIELD=VALUE: control tokens for a conditioned model
    # The values the model knows per condition field (none: unconditioned); the core sets them for `plan`.
    condition_values: dict[str, list[str]] = field(default_factory=dict)
    # Set by the core for `plan`: the model's fill-in-the-middle sentinels (None: trained without FIM, so it cannot
    # infill) and the context a prompt and its continuation must fit in.
    fim: Fim | None = None
    context: int | None = None
    # Set by the core for `plan`: tokens per training item ({"items", "median", "p95"}; None where the model's run
    # did not record them), for budgets that follow the data (music: a piece may run as long as most it learned).
    item_tokens: dict[str, int] | None = None
    out: Path | None = None  # generate: the output file or folder; None prints
    overwrite: bool = False  # replace files `out` would write that exist already

    def out_path(self) -> Path:
        """`out`, which a modality's `write` is always given (the core shows the samples otherwise)."""
        if self.out is None:
            raise ValueError("write needs request.out; without one the core calls the modality's show")
        return Path(self.out)

    def prompt_file(self) -> Path:
        """`prompt` as the file a music or image model reads: one line where there is none, or a folder."""
        path = Path(self.prompt or "")
        if path.is_dir():
            raise DataError(f"--prompt {path}: a folder; give one file")
        if not path.is_file():
            raise DataError(f"--prompt {path}: no such file")
        return path

    def out_stems(self, n: int, suffixes: tuple[str, ...]) -> list[Path]:
        """Where each of `n` samples' files go, without their suffix. A folder `out`: out/sample_000, ... An `out`
        named as a file, ending in one of `suffixes` (`--out chorale.mid`): chorale for one sample, chorale_000, ...
        for several, side by side (a folder called chorale.mid surprised its user)."""
        out = self.out_path()
        if out.suffix.lower() not in suffixes or out.is_dir():
            return [out / numbered(SAMPLE_STEM, i) for i in range(n)]
        stem = out.with_suffix("")
        return [stem] if n == 1 else [stem.with_name(numbered(stem.name, i)) for i in range(n)]

    def asked(self) -> dict[str, str | None]:
        """The `--cond FIELD=VALUE` flags as field -> value (the core checks them against the model)."""
        return dict(split_condition(spec) for spec in self.conditions)


@dataclass
class Plan:
    """A modality's answer to a Request: prompts (parsed once, here), sampling defaults, a constraint, a
    streamer, and anything `write` needs from the prompt (`parsed`: e.g. the prompt image's pixels)."""

    prompts: list[list[int]]
    sampling: dict[str, Any] = field(default_factory=dict)  # defaults for the SamplingOptions left unset
    constraint: Callable[[], Constraint] | None = None  # makes a fresh constraint (it may keep per-row state)
    streamer: Callable[[int, int], str] | None = None  # fed (row, token) as tokens are sampled: the text to show now
    parsed: Any = None
    new_tokens: int | None = None  # every sample needs exactly this many (an image's patches): replaces max_new_tokens
    # Per prompt, condition values the modality's own options ask for (--label 7: {"label": "7"}); `--cond`
    # flags win over them. What each sample was conditioned on in the end: `Sample.conditions`.
    conditions: list[dict[str, str]] | None = None
