"""What one row of decoding asks for: its sampling settings (`SamplingConfig`), and the row itself (`Row`):
prompt, seed, constraint, guidance prompt, head and token callback. The engine (arseq.decode.engine) holds
each row's settings as tensors, so rows with different settings share every pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

# Given rows' tokens so far (prompt + generated), return a bool tensor (rows, vocab), on any device: True where
# a token is allowed. The row lists persist between calls, so a constraint may keep per-row state keyed on
# them: between two calls a row grows (tokens appended) or, in speculative decoding, shrinks (rejected tokens
# removed from its end), never both (see docs/plugins.md and PrefixCounts). Rows that share a constraint
# object are passed to it together; which rows those are changes as rows join and leave.
Constraint = Callable[[list[list[int]]], Tensor]
# Called with each token as it is chosen (the stop token included) and whether the row ends with it.
OnToken = Callable[[int, bool], None]


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_tokens: tuple[int, ...] = field(default_factory=tuple)
    guidance: float = 1.0  # classifier-free guidance scale (with a guide prompt); 1 = the conditional model alone
    min_new_tokens: int = 0  # the stop tokens are masked until this many tokens were generated (Hugging Face's name)

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_k", self.top_k is None or self.top_k >= 1, ">= 1"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", self.min_p is None or 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("guidance", self.guidance >= 0, ">= 0"),
            ("seed", self.seed is None or isinstance(self.seed, int) and not isinstance(self.seed, bool), "an integer"),
            ("min_new_tokens", isinstance(self.min_new_tokens, int) and self.min_new_tokens >= 0, "an integer >= 0"),
        ]
        for name, ok, wanted in checks:
            if not ok:
                raise ValueError(f"{name} must be {wanted}, got {getattr(self, name)!r}")


@dataclass
class Row:
    """One sequence to continue. `guide` (the prompt without its conditions) runs in a partner slot to guide
    this row by `cfg.guidance`; the first `head` prompt tokens (BOS and control tokens) stay in front of the
    window when it slides; `seed` (default: cfg.seed, else drawn from torch's generator) seeds this row alone."""

    prompt: list[int]
    cfg: SamplingConfig
    seed: int | None = None
    constraint: Constraint | None = None
    guide: list[int] | None = None
    head: int = 0
    on_token: OnToken | None = None


@dataclass
class Finished:
    """A row that left the engine: its tokens (the stop token excluded) and why it ended."""

    id: int
    tokens: list[int]
    stopped: bool  # ended on a stop token rather than its budget
    cancelled: bool = False
    error: str | None = None  # the model's logits were not finite (NaN weights, an enormous guidance)


@dataclass
class Generation:
    tokens: list[list[int]]  # per row: the continuation, stop token excluded
    stopped: list[bool]  # per row: ended on a stop token
