"""The Python API: `arseq.load(path).generate(n=4, temperature=0.9, bars=8, out="samples/")`.

Options are the command line's, by their Python names (`max_new_tokens`, `top_p`, a modality's `bars`,
`prompt_bars`, ...): they are checked by the same parser, so `arseq generate --help` documents both, and an
option given here counts as typed (a modality's presets never override it).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from arseq import checkpoint, workflows
from arseq.errors import DataError
from arseq.modalities import Sample


@dataclass
class Model:
    """A loaded checkpoint or export: `.loaded` holds the model, its tokenizer and its modality."""

    loaded: checkpoint.Loaded

    def options(self, verb: str = "generate") -> dict[str, Any]:
        """Every option `verb` takes, with its default."""
        return {k: v for k, v in vars(self._defaults(verb)).items() if k not in _FIXED}

    def _defaults(self, verb: str) -> argparse.Namespace:
        from arseq.cli import sampling_parser

        return sampling_parser(verb, self.loaded).parse_args([])

    def _args(self, verb: str, options: dict[str, Any]) -> argparse.Namespace:
        args = self._defaults(verb)
        unknown = sorted(set(options) - set(vars(args)) | set(options) & _FIXED)
        if unknown:
            known = ", ".join(sorted(set(vars(args)) - _FIXED))
            raise DataError(f"unknown option(s) {', '.join(unknown)} for {verb}; known: {known}")
        for key, value in options.items():
            setattr(args, key, value)
        args.explicit = frozenset(options)
        return args

    def generate(self, n: int = 1, *, out: str | os.PathLike | None = None, overwrite: bool = False,
                 **options: Any) -> list[Sample]:
        """Sample `n` sequences; with `out`, also write the modality's files there (never over existing
        files unless `overwrite`). Returns the samples (prompt and new token ids, perplexity)."""
        args = self._args("generate", {**options, "num_samples": n, "out": out, "overwrite": overwrite})
        return workflows.run_sampling("generate", self.loaded, args)["samples"]

    def evaluate(self, *, data_paths: list[str] | None = None, **options: Any) -> dict[str, Any]:
        """What `arseq evaluate` prints: held-out loss, perplexity, baselines, the modality's figures."""
        return workflows.run_sampling("evaluate", self.loaded, self._args("evaluate", {**options, "data_paths": data_paths}))

    def score(self, sequences: list[list[int]], *, batch_size: int = 16, stride: int | None = None) -> list[float]:
        """Mean NLL (nats per predicted token) of each token sequence (BOS first), scored in windows if long."""
        from arseq.models.scoring import sequence_nll

        nll, count = sequence_nll(self.loaded.model, sequences, batch_size=batch_size,
                                  pad_id=self.loaded.tokenizer.pad_id, stride=stride)
        return [float(a / b) if b else float("nan") for a, b in zip(nll, count)]


_FIXED = frozenset({"help", "checkpoint", "modality", "trust_modality_import"})  # chosen by `load`


def load(path: str | os.PathLike, *, modality: str | None = None, trust_modality_import: bool = False) -> Model:
    """A `.ckpt`, a run folder of `arseq train`, or an export folder (arseq or Hugging Face format).

    As on the command line, the file's modality is resolved among registered modalities only, unless
    `modality` names one or `trust_modality_import` allows the import path stored in the file."""
    return Model(checkpoint.load(path, modality, trust_modality_import))
