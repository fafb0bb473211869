"""The verb table: each verb of `arseq VERB`, what it does, and the function that runs it.

A verb's module is imported when that verb runs (`arseq.cli` does it through this fixed table, never from user
input): `arseq generate` does not pay for importing Lightning, and `arseq serve` alone needs the `serve` extra.
A new verb is a module in `arseq/app/` (or `arseq/serve/` for the server) with a `run(argv) -> int` and a row here.
"""

from __future__ import annotations

from typing import NamedTuple


class Verb(NamedTuple):
    help: str
    target: str  # "module:function", the function taking the verb's argv and returning the exit status


VERBS: dict[str, Verb] = {
    "train": Verb("train a model from a YAML config", "arseq.app.train_verb:run_train_verb"),
    "prepare": Verb("tokenize and cache a dataset; print its statistics as JSON", "arseq.app.prepare_verb:run_prepare"),
    "generate": Verb("sample from a checkpoint or export and write files", "arseq.app.sampling_verbs:run_generate"),
    "evaluate": Verb("held-out loss, perplexity and modality metrics as JSON", "arseq.app.sampling_verbs:run_evaluate"),
    "export": Verb("write config.json + model.safetensors + tokenizer.json", "arseq.app.export:run_export"),
    "configs": Verb("list the shipped configs, or print one to start your own from", "arseq.app.configs_verb:run_configs"),
    "modalities": Verb("list the registered modalities", "arseq.app.modalities_verb:run_modalities"),
    "score": Verb("per-item NLL, perplexity and token count of given files (CSV; JSON on stdout)", "arseq.app.score_verb:run_score"),
    "analyze": Verb("do errors compound? 'arseq analyze drift': injected errors and free-running survival", "arseq.app.analyze_verb:run_analyze"),
    "revise": Verb("improve finished pieces where they are weakest, with a fill-in-the-middle model", "arseq.app.revise_verb:run_revise"),
    "serve": Verb("an HTTP server with continuous batching and a web page (needs 'arseq[serve]')", "arseq.serve.command:run_serve"),
}
# Verbs that install their own SIGTERM handling (Lightning's, uvicorn's).
OWN_SIGNALS = frozenset({"train", "serve"})
