"""`--draft` for generate/evaluate (and `arseq.load(...).generate(draft=...)`): speculative decoding
(arseq.decode.speculative) with a draft checkpoint or export of the same tokenizer, or `ngram`
(prompt lookup, no model). Loading, checking and the per-run report live here, not in workflows."""
from __future__ import annotations

from typing import Any

from arseq.checkpoint import Loaded
from arseq.decode import DraftModel, NGram, Speculative
from arseq.errors import DataError


def report(spec: Speculative) -> dict[str, Any]:
    """The figures for evaluate's JSON: acceptance rate, tokens per target pass, tokens/s."""
    return {"draft": "ngram" if isinstance(spec.proposer, NGram) else "model", "draft_tokens": spec.k, **spec.stats.as_dict()}


def from_args(loaded: Loaded, args: Any) -> Speculative | None:
    """The run's speculative decoder from --draft/--draft-tokens/--ngram (`args`: arseq.generation.RunOptions), or None without --draft."""
    spec = getattr(args, "draft", None)
    if not spec:
        return None
    k = getattr(args, "draft_tokens", 4)
    if not isinstance(k, int) or k < 1:
        raise DataError(f"--draft-tokens must be a positive integer, got {k!r}")
    if spec == "ngram":
        n = getattr(args, "ngram", 6)
        if not isinstance(n, int) or n < 1:
            raise DataError(f"--ngram must be a positive integer, got {n!r}")
        return Speculative(NGram(n=n, min_n=(n + 1) // 2), k)
    return Speculative(DraftModel(load_draft(spec, loaded, args).model), k)


def load_draft(path: str, loaded: Loaded, args: Any) -> Loaded:
    """The draft model, checked against the target (same tokenizer) and placed like it (device, dtype, int8)."""
    from arseq import checkpoint
    from arseq.models.inference import prepare_for_inference

    try:
        draft = checkpoint.load(path, getattr(args, "modality", None), getattr(args, "trust_modality_import", False))
    except FileNotFoundError as e:
        raise DataError(f"--draft {path}: {e}") from None
    ours, theirs = loaded.tokenizer, draft.tokenizer
    if theirs.vocab_size != ours.vocab_size:
        raise DataError(f"--draft {path}: its vocabulary has {theirs.vocab_size} tokens, the model's {ours.vocab_size}; "
                        "a draft needs the model's tokenizer")
    if theirs.to_dict() != ours.to_dict():
        raise DataError(f"--draft {path}: its tokenizer differs from the model's (same size, other tokens); "
                        "train the draft on the same data and tokenizer")
    same = (lambda c: None if c is None else (c.offset, c.fields))  # how training placed them may differ
    if same(draft.controls) != same(loaded.controls):
        raise DataError(f"--draft {path}: its condition tokens differ from the model's; train the draft on the same data "
                        "with the same data.conditions")
    device = loaded.model.norm.weight.device
    prepare_for_inference(draft.model, device, getattr(args, "dtype", None), getattr(args, "quantize", "none"))
    return draft
