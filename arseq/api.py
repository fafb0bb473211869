"""The Python API: `arseq.load(path).generate(n=4, temperature=0.9, bars=8, out="samples/")`.

Options are the command line's, by their Python names (`max_new_tokens`, `top_p`, a modality's `bars`,
`prompt_bars`, ...), checked by the same typed parser, so `arseq generate --help` documents both. A
sampling option not given takes the modality's default, else the core's, exactly as on the command line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from arseq.app import generation
from arseq.app import options as typed
from arseq.artifacts import checkpoint
from arseq.errors import DataError, option_names
from arseq.limits import check_call
from arseq.modalities import Sample
from arseq.models.scoring import sequence_nll
from arseq.outputs import claimed

Paths = str | os.PathLike | Sequence[str | os.PathLike]


@contextmanager
def python_names(renamed: dict[str, str]) -> Iterator[None]:
    """The checks the API shares with the command line name flags (`--num-samples must be >= 1`); a Python
    caller reads its own names (`n must be >= 1`): `renamed` maps the flags whose names differ."""
    try:
        yield
    except DataError as e:
        raise DataError(option_names(str(e), renamed)) from None


@dataclass
class Model:
    """A loaded checkpoint or export: `.loaded` holds the model, its tokenizer and its modality."""

    loaded: checkpoint.Loaded

    def __repr__(self) -> str:
        """One line for a REPL (the dataclass's own printed every module and the whole run metadata)."""
        model, controls = self.loaded.model, self.loaded.controls
        cfg = model.cfg
        conditioned = f", conditioned on {', '.join(controls.fields)}" if controls else ""
        infill = ", fill-in-the-middle" if self.loaded.meta.fim else ""
        return (
            f"Model({self.loaded.modality.name}: {model.num_params() / 1e6:.2f}M parameters, {cfg.n_layer} layers of width "
            f"{cfg.d_model}, vocab {cfg.vocab_size}, context {cfg.max_seq_len}{conditioned}{infill})"
        )

    def options(self, verb: str = "generate") -> dict[str, Any]:
        """Every option `verb` (generate or evaluate) takes, with its default."""
        return typed.defaults(verb, self.loaded.modality.generate_options)

    def _call(self, verb: str, kwargs: dict[str, Any]) -> typed.Call:
        return typed.from_python(verb, self.loaded.modality.generate_options, kwargs)

    def generate(self, n: int = 1, *, out: str | os.PathLike | None = None, overwrite: bool = False, **kwargs: Any) -> list[Sample]:
        """Sample `n` sequences; with `out`, also write the modality's files there (never over existing
        files unless `overwrite`); nothing is printed. Returns the samples (prompt and new token
        ids, perplexity)."""
        with python_names({flag.replace("_", "-"): name for flag, name in typed.PYTHON_NAMES["generate"].items()}):
            call = self._call("generate", {**kwargs, "n": n, "out": out, "overwrite": overwrite})
            check_call(self.loaded, call, "generate")
            with claimed(call.request.out):
                return generation.run_generate(self.loaded, call.request, call.run)[0]

    def evaluate(self, *, data_paths: Paths | None = None, **kwargs: Any) -> dict[str, Any]:
        """What `arseq evaluate` prints: held-out loss, perplexity, baselines, the modality's figures. `data_paths`:
        files, folders or globs to evaluate on (one, or a list) instead of the training data's validation split."""
        with python_names({"data.paths": "data_paths"}):
            call = self._call("evaluate", {**kwargs, "data_paths": None if data_paths is None else path_list(data_paths)})
            check_call(self.loaded, call, "evaluate")
            with checkpoint.stored_data(self.loaded, call.data_paths):
                return generation.run_evaluate(self.loaded, call.request, call.run, call.data_paths, call.stride)

    def score(self, sequences: list[list[int]], *, batch_size: int = 16, stride: int | None = None) -> list[float]:
        """Mean NLL (nats per predicted token) of each token sequence (BOS first), scored in windows if long."""
        check_sequences(sequences, self.loaded.model.cfg.vocab_size)
        context = self.loaded.model.cfg.max_seq_len
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"score: batch_size must be an integer >= 1, got {batch_size!r}")
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or not 0 < stride <= context):
            raise DataError(f"score: stride must be an integer between 1 and the model's context ({context}), got {stride!r}")
        nll, count = sequence_nll(self.loaded.model, sequences, batch_size=batch_size, pad_id=self.loaded.tokenizer.pad_id, stride=stride)
        return [float(a / b) if b else float("nan") for a, b in zip(nll, count)]


def path_list(paths: Paths) -> list[str]:
    """One path, or a list of them, as the list of strings the parser takes."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)):
        raise DataError(f"data_paths: expected a path or a list of paths, got {type(paths).__name__}")
    return [os.fspath(p) if isinstance(p, os.PathLike) else p for p in paths]


def check_sequences(sequences: Any, vocab_size: int) -> None:
    """Token id sequences as `score` needs them: lists of ints in [0, vocab_size); one line naming the first
    that is not (an id out of range indexes past the embedding: a traceback deep in torch, or garbage)."""
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
        raise DataError(f"score: sequences must be a list of token id lists, got {type(sequences).__name__}")
    for i, seq in enumerate(sequences):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__iter__"):
            raise DataError(f"score: sequence {i} is a {type(seq).__name__}, not a list of token ids")
        ids = np.asarray(list(seq))
        if ids.size and ids.dtype.kind not in "iu":
            raise DataError(f"score: sequence {i} holds {ids.dtype} values, not integer token ids")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            raise DataError(f"score: sequence {i} has token id {bad}, outside the vocabulary of {vocab_size}")


def load(path: str | os.PathLike, *, modality: str | None = None, trust_modality_import: bool = False) -> Model:
    """A `.ckpt`, a run folder of `arseq train`, or an export folder (arseq or Hugging Face format).

    As on the command line, the file's modality is resolved among registered modalities only, unless
    `modality` names one or `trust_modality_import` allows the import path stored in the file."""
    return Model(checkpoint.load(path, modality, trust_modality_import))
