"""OpenAI's `logprobs` on /v1/completions: the model's log-probability of each token of a choice, and of the
likeliest tokens at each position.

What they are: the model's own numbers, the log-softmax of its raw logits, before temperature, top-k/top-p,
penalties, guidance or constraints changed them (vLLM's default). Why one teacher-forced pass after the sample
ends instead of the sampler's numbers: the decode engine's hot path (arseq.decode) chooses from logits it has
already changed and keeps nothing per token, and one forward pass over prompt + sample gives every position at
once. The pass (`scores_of`) runs where the model is, the engine thread (in the engine process under
`arseq serve`), as the request's samples are made, over every token the engine generated; its numbers travel
back with the samples. The HTTP side (`choice_logprobs`) keeps those of the tokens it kept (with `stop`: up to
the token that completed the stop string) and gives them OpenAI's legacy shape, with token strings and offsets
into the returned text, which only it knows.

A sample longer than the context is scored in windows that advance by half the context
(arseq.models.scoring.chunk_sequences; a conditioned model's BOS and control tokens start every window), so
each token past the first window sees at least half a context before it, as the sampler's sliding window does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from arseq.artifacts.checkpoint import Loaded
from arseq.models.scoring import chunk_sequences, collate_chunks
from arseq.models.transformer import Transformer
from arseq.serve.jobs import JobPlan, text_delta, text_of
from arseq.tokenizers.base import SPECIALS

BATCH = 16  # scoring windows per forward pass


@dataclass
class Scores:
    """One sample's log-probabilities: for each position of prompt + sample from `first` on (position 0, BOS,
    is predicted by nothing), the token's, and the `top` likeliest tokens' ids and log-probabilities."""

    first: int
    chosen: list[float]
    top_ids: list[list[int]]
    top: list[list[float]]


@torch.inference_mode()
def score(model: Transformer, seqs: Sequence[Sequence[int]], first: Sequence[int], head: int, top: int) -> list[Scores]:
    """The model's log-probabilities of each sequence's tokens from `first[i]` on (earlier ones are context only)
    and of its `top` likeliest tokens there, in windows of the context that advance by half of it (`head`: tokens
    that start every window, as in sequence_nll)."""
    context = model.cfg.max_seq_len
    chunks = chunk_sequences(seqs, context, first, max(1, context // 2), head)  # in sequence order, windows in order
    out = [Scores(max(1, f), [], [], []) for f in first]
    device = model.embed.weight.device
    for b0 in range(0, len(chunks), BATCH):
        batch = chunks[b0 : b0 + BATCH]
        ids, _, _ = collate_chunks(batch)
        logp = torch.log_softmax(model(ids.to(device)).float(), dim=-1)
        for r, (i, lo, piece) in enumerate(batch):
            at = logp[r, lo - 1 : len(piece) - 1]  # the predictions of piece[lo:]
            targets = torch.from_numpy(piece[lo:]).to(device)
            out[i].chosen += at.gather(1, targets[:, None])[:, 0].tolist()
            if top:
                values, tokens = at.topk(top, dim=-1)
                out[i].top += values.tolist()
                out[i].top_ids += tokens.tolist()
    return out


def scores_of(loaded: Loaded, job: JobPlan, results: list[tuple[list[int], bool]]) -> list[Scores] | None:
    """Each sample's Scores over its generated tokens (and, with `echo`, its prompt's); None unless asked."""
    parsed = job.parsed
    if parsed is None or parsed.logprobs is None:
        return None
    prompts = [r.prompt for r in job.rows]
    seqs = [p + t for p, (t, _) in zip(prompts, results)]
    first = [1 if parsed.echo else len(p) for p in prompts]
    return score(loaded.model, seqs, first, job.head, parsed.logprobs)


def choice_logprobs(loaded: Loaded, prompt: list[int], kept: list[int], scores: Scores, echo: bool) -> dict[str, Any]:
    """One choice's `logprobs` in OpenAI's legacy shape for the `kept` tokens (after the prompt's with `echo`,
    leaving out the BOS and control tokens arseq put in front): each token's string (`token_string`), its
    log-probability (null where nothing predicts it), the likeliest tokens there (null when none were asked
    for), and where its text begins in the choice's `text`."""
    shown = [i for i, t in enumerate(prompt) if not _arseq_own(loaded, i, t)] if echo else []
    echoed = [prompt[i] for i in shown]
    base = len(text_of(loaded, echoed)) if echo else 0
    positions = shown + list(range(len(prompt), len(prompt) + len(kept)))
    seq, names = prompt + kept, _Names(loaded)
    at = [p - scores.first for p in positions]
    top_logprobs = None
    if scores.top:
        top_logprobs = [names.top(scores.top_ids[a], scores.top[a]) if a >= 0 else None for a in at]
    return {
        "tokens": [names(seq[p]) for p in positions],
        "token_logprobs": [scores.chosen[a] if a >= 0 else None for a in at],
        "top_logprobs": top_logprobs,
        "text_offset": text_offsets(loaded, echoed, 0) + text_offsets(loaded, kept, base),
    }


def _arseq_own(loaded: Loaded, position: int, token: int) -> bool:
    """Whether a prompt token is one arseq put there (the BOS in front, a control token), not the client's."""
    controls = loaded.controls
    return (position == 0 and token == loaded.tokenizer.bos_id) or (
        controls is not None and controls.offset <= token < controls.offset + controls.size
    )


def text_offsets(loaded: Loaded, tokens: list[int], start: int) -> list[int]:
    """Where each token's text begins in the text of `tokens`, plus `start`: the length of the text decoded
    before it, as a stream decodes it (jobs.text_delta). A token that only begins a multi-byte character adds
    no text yet, so it and the token that completes the character begin at that character."""
    out, at, state = [], start, (0, 0)
    for i in range(len(tokens)):
        out.append(at)
        new, state = text_delta(loaded, tokens, state, end=i + 1)
        at += len(new)
    return out


class _Names:
    """Token strings, each token decoded alone (remembered: the same ids recur through top_logprobs). A token
    that is part of a multi-byte UTF-8 character decodes to U+FFFD, the replacement character (vLLM's choice);
    the special tokens are named `<pad>`, `<bos>`, `<eos>`, a control token `<field=value>` (`<field=?>`: the
    field's unknown token)."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        tok = loaded.tokenizer
        self.known: dict[int, str] = {tok.pad_id: SPECIALS[0], tok.bos_id: SPECIALS[1], tok.eos_id: SPECIALS[2]}
        controls = loaded.controls
        if controls is not None:
            for name, values in controls.fields.items():
                self.known[controls.unknown_id(name)] = f"<{name}=?>"
                self.known.update({controls.value_id(name, v): f"<{name}={v}>" for v in values})

    def __call__(self, token: int) -> str:
        if token not in self.known:
            self.known[token] = text_of(self.loaded, [token])
        return self.known[token]

    def top(self, ids: list[int], logprobs: list[float]) -> dict[str, float]:
        """{token string: log-probability}, likeliest first; where two tokens decode alike, the likelier is kept."""
        out: dict[str, float] = {}
        for t, v in zip(ids, logprobs):
            out.setdefault(self(t), v)
        return out
