"""`--draft` for generate/evaluate (and `arseq.load(...).generate(draft=...)`): speculative decoding
(arseq.decode.speculative) with a draft checkpoint or export of the same tokenizer, or `ngram`
(prompt lookup, no model): loading and checking the draft, and the per-run report."""

from __future__ import annotations

from typing import Any

from arseq.app.run_options import RunOptions
from arseq.artifacts import checkpoint
from arseq.artifacts.checkpoint import Loaded
from arseq.decode import DraftModel, NGram, Speculative
from arseq.errors import DataError
from arseq.models.inference import prepare_for_inference


def report(spec: Speculative) -> dict[str, Any]:
    """The figures for evaluate's JSON: acceptance rate, tokens per target pass, tokens/s."""
    return {"draft": "ngram" if isinstance(spec.proposer, NGram) else "model", "draft_tokens": spec.k, **spec.stats.as_dict()}


def from_run(loaded: Loaded, run: RunOptions) -> Speculative | None:
    """The run's speculative decoder from --draft/--draft-tokens/--ngram, or None without --draft."""
    spec, k, n = run.draft, run.draft_tokens, run.ngram
    if not spec:
        return None
    if not isinstance(k, int) or k < 1:
        raise DataError(f"--draft-tokens must be a positive integer, got {k!r}")
    if spec == "ngram":
        if not isinstance(n, int) or n < 1:
            raise DataError(f"--ngram must be a positive integer, got {n!r}")
        return Speculative(NGram(n=n, min_n=(n + 1) // 2), k)
    return Speculative(DraftModel(load_draft(spec, loaded, run).model), k)


def load_draft(path: str, loaded: Loaded, run: RunOptions) -> Loaded:
    """The draft model, checked against the target (same tokenizer) and placed like it (device, dtype, int8); its
    modality is chosen as the target's was (`--modality`, `--trust-modality-import`)."""
    try:
        draft = checkpoint.load(path, loaded.chosen_modality, loaded.trust_import)
    except FileNotFoundError as e:
        raise DataError(f"--draft {path}: {e}") from None
    ours, theirs = loaded.tokenizer, draft.tokenizer
    if theirs.vocab_size != ours.vocab_size:
        raise DataError(
            f"--draft {path}: its vocabulary has {theirs.vocab_size} tokens, the model's {ours.vocab_size}; a draft needs the model's tokenizer"
        )
    if theirs.to_dict() != ours.to_dict():
        raise DataError(
            f"--draft {path}: its tokenizer differs from the model's (same size, other tokens); train the draft on the same data and tokenizer"
        )
    same = lambda c: None if c is None else (c.offset, c.fields)  # how training placed them may differ
    if same(draft.controls) != same(loaded.controls):
        raise DataError(
            f"--draft {path}: its condition tokens differ from the model's; train the draft on the same data with the same data.conditions"
        )
    device = loaded.model.norm.weight.device
    prepare_for_inference(draft.model, device, run.dtype, run.quantize)
    return draft
