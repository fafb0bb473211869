"""generate and evaluate as plain functions: a typed Request goes to the modality's `plan` once, the core
samples (batched, seeded per sample) and scores, and the modality writes files.

Used by the CLI (arseq.app.options parses flags and YAML into these types) and by the Python API (arseq.api).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from arseq.analysis.obedience import condition_report
from arseq.app import drafting
from arseq.app.planning import Planned, make_plan
from arseq.app.run_options import RunOptions
from arseq.artifacts.checkpoint import Loaded
from arseq.conditioning import Controls, split_condition
from arseq.data.config import DataConfig
from arseq.data.prepare import Prepared, prepare
from arseq.decode import Speculative, generate
from arseq.modalities import DataError, EvalInputs, Example, Modality, Request, Sample
from arseq.modalities.plan import SAMPLE_STEM, numbered
from arseq.models.device import resolve_device
from arseq.models.inference import prepare_for_inference
from arseq.models.scoring import TokenSeqs, sequence_nll, unigram_baseline

log = logging.getLogger(__name__)


def sample(
    loaded: Loaded,
    planned: Planned,
    batch_size: int,
    compile: Any = False,
    echo: Callable[[str], None] | None = None,
    spec: Speculative | None = None,
) -> list[Sample]:
    """Sample one sequence per prompt of the plan on the decode engine (`batch_size` rows at once, rows joining
    as others end), with its constraint (and its streamer's text to `echo`, when given); speculatively with
    `spec` (--draft)."""
    tok, model, controls, cfg = loaded.tokenizer, loaded.model, loaded.controls, planned.cfg
    head = controls.head if controls is not None else 0  # BOS and the conditions stay in the context
    prompts, streamer = planned.prompts, planned.plan.streamer if echo is not None else None
    if spec is not None and planned.guide is not None:
        raise DataError(
            f"--draft: speculative decoding does not guide, and these samples are guided (guidance {cfg.guidance:g}: "
            f"--guidance, or the {loaded.modality.name} default for conditioned samples); add --guidance 1 or drop --draft"
        )
    # tokens, not samples: one long piece (--bars 500) is minutes of a single sample
    bar = tqdm(desc="generating", unit="tok", leave=False, disable=None) if streamer is None else None
    finished = 0

    def on_token(row: int, token: int, done: bool) -> None:
        nonlocal finished
        if streamer is not None and echo is not None:
            echo(streamer(row, token))
        if bar is not None:
            bar.update()
            if done:
                finished += 1
                bar.set_postfix_str(f"{finished}/{len(prompts)} samples", refresh=False)

    slots = min(batch_size, len(prompts)) * (2 if planned.guide is not None else 1)
    try:
        gen = generate(
            model,
            prompts,
            cfg,
            pad_id=tok.pad_id,
            constraint=planned.constraint() if planned.constraint else None,
            guide=planned.guide,
            head=head,
            on_token=on_token,
            compile=compile,
            slots=slots,
            speculative=spec,
        )
    except ValueError as e:
        raise DataError(f"generate: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    out = scored_samples(loaded, planned, gen.tokens, gen.stopped, batch_size)
    if spec is not None:
        log.info(spec.stats.line())
    return out


def scored_samples(loaded: Loaded, planned: Planned, tokens: list[list[int]], stopped: list[bool], batch_size: int) -> list[Sample]:
    """The samples with their prompts (control tokens left out), the conditions they were drawn with, and
    their mean NLL per new token (EOS included where they stopped), scored `batch_size` at a time."""
    tok, controls, prompts = loaded.tokenizer, loaded.controls, planned.prompts
    head = controls.head if controls is not None else 0
    out: list[Sample] = []
    for b0 in range(0, len(prompts), batch_size):
        batch = prompts[b0 : b0 + batch_size]
        scored = [p + t + ([tok.eos_id] if s else []) for p, t, s in zip(batch, tokens[b0 : b0 + batch_size], stopped[b0 : b0 + batch_size])]
        nll, count = sequence_nll(loaded.model, scored, start=[len(p) for p in batch], pad_id=tok.pad_id, head=head)
        for i, (n, c) in enumerate(zip(nll, count), start=b0):
            prompt = controls.strip(prompts[i]) if controls else list(prompts[i])
            conditions = dict(planned.conditions[i]) if planned.conditions else {}
            out.append(Sample(prompt, tokens[i], stopped[i], float(n / c) if c else float("nan"), conditions))
    return out


class HeldOut(NamedTuple):
    """What evaluation scores: the training data (None when it is gone), the items to evaluate (with their
    control tokens) and where they came from, all tokenized with the checkpoint's tokenizer."""

    train: Prepared | None
    items: list[np.ndarray]
    where: str


def held_out(loaded: Loaded, data_paths: list[str] | None) -> HeldOut:
    """The items to evaluate: --data.paths, else the training data's validation split."""
    modality, tok = loaded.modality, loaded.tokenizer
    options = loaded.meta.modality_options
    controls = loaded.controls
    conditions = list(controls.fields) if controls is not None else []  # a model from before conditions had none
    trained_on = DataConfig(**{**loaded.meta.data, "conditions": conditions})
    try:
        train_data: Prepared | None = prepare(modality, options, trained_on, tokenizer=tok, controls=controls)
    except DataError:
        train_data = None  # the training data is not here any more
    if data_paths:
        given = DataConfig(paths=data_paths, val_fraction=0, block_size=trained_on.block_size, conditions=conditions)
        evaluated = prepare(modality, options, given, tokenizer=tok, controls=controls).train
        where = ", ".join(data_paths)
    elif train_data is not None:
        evaluated, where = train_data.val, "validation split"
    else:
        raise DataError("the training data of this checkpoint is not available; pass --data.paths")
    items = evaluated.items()
    if not items:
        raise DataError(f"no held-out items to evaluate ({where}); pass --data.paths")
    return HeldOut(train_data, items, where)


def own_tokens(controls: Controls | None, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Sequences as the modality sees them: its own tokens, without the control tokens (as they are, often
    memory-mapped, when there are none)."""
    return [np.asarray(controls.strip(s), dtype=np.int64) for s in sequences] if controls else list(sequences)


def evaluate(loaded: Loaded, request: Request, run: RunOptions, data_paths: list[str] | None = None, stride: int | None = None) -> dict[str, Any]:
    """Loss on held-out data, the modality's extra figures, and (with request.num_samples) sample metrics."""
    data = held_out(loaded, data_paths)
    stride = stride or max(1, loaded.model.cfg.max_seq_len // 2)
    result = scored(loaded, data, run.batch_size, stride)
    if loaded.controls is not None:
        result["conditions"] = condition_report(loaded.model, loaded.controls, data.items, run.batch_size, loaded.tokenizer.pad_id, stride)
    if request.num_samples > 0:
        result.update(sampled(loaded, request, run, data))
    return result


def scored(loaded: Loaded, data: HeldOut, batch_size: int, stride: int) -> dict[str, Any]:
    """The held-out items' loss (each token given its item's conditions), the unigram baseline and the modality's figures."""
    tok, controls = loaded.tokenizer, loaded.controls
    t0 = time.perf_counter()
    start = [1 + (controls.width if controls else 0)] * len(data.items)
    head = controls.head if controls else 0
    nll, count = sequence_nll(
        loaded.model, data.items, start=start, batch_size=batch_size, pad_id=tok.pad_id, stride=stride, progress=True, head=head
    )
    items = own_tokens(controls, data.items)
    train_items = own_tokens(controls, data.train.train.items()) if data.train is not None else items
    loss = float(nll.sum() / max(1, count.sum()))
    unigram, counted = unigram_baseline(train_items, items, tok.vocab_size, never_predicted=(tok.pad_id, tok.bos_id))
    extra = loaded.modality.evaluate(tok, EvalInputs(loss, float(nll.sum()), int(count.sum()), nll, count, train_items, items))
    return {
        "data": data.where,
        "items": len(items),
        "predicted_tokens": int(count.sum()),
        "context": loaded.model.cfg.max_seq_len,
        "stride": stride,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "seconds": round(time.perf_counter() - t0, 3),
        "baselines": {"unigram": {"loss": unigram, "perplexity": math.exp(unigram)}, **extra.get("baselines", {})},
        "perplexity_vs_unigram": math.exp(loss - unigram),
        "unigram_counted_tokens": counted,
        **{k: v for k, v in extra.items() if k != "baselines"},
    }


def sampled(loaded: Loaded, request: Request, run: RunOptions, data: HeldOut) -> dict[str, Any]:
    """`request.num_samples` samples' figures next to the held-out items': the modality's metrics, perplexity,
    lengths, and with conditions how often the samples show the values asked for."""
    tok, modality, controls = loaded.tokenizer, loaded.modality, loaded.controls
    items = own_tokens(controls, data.items)
    train_items = own_tokens(controls, data.train.train.items()) if data.train is not None else items
    planned = make_plan(loaded, request)
    result: dict[str, Any] = {"sampling": {k: v for k, v in asdict(planned.cfg).items() if k != "stop_tokens"}}
    if request.conditions:
        result["sampling"]["conditions"] = list(request.conditions)
    spec = drafting.from_run(loaded, run)
    samples = sample(loaded, planned, run.batch_size, run.compile, spec=spec)
    if spec is not None:
        result["speculative"] = drafting.report(spec)
    result["sample_metrics"] = modality.metrics(tok, [s.prompt + s.tokens for s in samples], train_items)
    n = min(len(items), max(request.num_samples, 100))  # a seeded sample of the held-out items, not the first n
    chosen = np.random.default_rng(0).choice(len(items), n, replace=False)
    result["data_metrics"] = modality.metrics(tok, [np.asarray(items[i]).tolist() for i in sorted(chosen)], train_items)
    result["sample_perplexity"] = float(np.exp(np.nanmean([s.nll for s in samples])))
    result["lengths"] = {
        "samples": quantiles([len(s.prompt) + len(s.tokens) + s.stopped for s in samples]),
        "held_out": quantiles([len(item) for item in items]),
    }
    if request.conditions and controls is not None:
        train_conditioned = data.train.train.items() if data.train is not None else []
        sequences = [s.prompt + s.tokens for s in samples]
        reference, held = examples(controls, train_conditioned), examples(controls, data.items)
        result["conditions_obeyed"] = obeyed(modality, tok, controls, request.conditions, sequences, reference, held)
    return result


def quantiles(lengths: list[int]) -> dict[str, float]:
    """Tokens per sequence (BOS and EOS included): where samples end next to where held-out items do."""
    q = np.quantile(np.asarray(lengths, dtype=np.float64), [0, 0.1, 0.5, 0.9, 1]) if lengths else [float("nan")] * 5
    return dict(zip(("min", "p10", "median", "p90", "max"), (float(v) for v in q)))


def examples(controls: Controls, sequences: TokenSeqs) -> list[Example]:
    """Conditioned sequences as the modality sees items: its own tokens, and the values their control tokens name."""
    return [Example(controls.strip(s), conditions=controls.read(s)) for s in sequences]


def obeyed(
    modality: Modality,
    tok: Any,
    controls: Controls,
    conditions: list[str],
    sequences: list[list[int]],
    reference: Sequence[Example] = (),
    held: Sequence[Example] = (),
    max_held: int = 300,
) -> dict[str, Any]:
    """Per requested field the modality can read back from a sample (a piece's analysed key, an image's class by a
    classifier fitted on `reference`): the share of samples showing the value asked for, next to that value's share
    of the training items, and the reader's agreement with the true values of (up to `max_held`) held-out items:
    the share a perfectly obedient model could reach as read."""
    held = list(held)[:max_held]
    read_all = modality.condition_values(tok, sequences + [list(e.tokens) for e in held], reference)  # one reader fit
    shown, real = read_all[: len(sequences)], read_all[len(sequences) :]
    out: dict[str, Any] = {}
    for spec in conditions:
        name, value = split_condition(spec)
        read = [s[name] for s in shown if name in s]
        if read:
            counts = controls.counts.get(name, {})
            agree = [r[name] == e.conditions[name] for r, e in zip(real, held) if name in r and name in e.conditions]
            out[name] = {
                "asked": value,
                "share": float(np.mean([v == value for v in read])),
                "samples_read": len(read),
                "training_share": (counts.get(value, 0) if value is not None else 0) / max(1, sum(counts.values())),
                "held_out_agreement": float(np.mean(agree)) if agree else None,
                "held_out_read": len(agree),
            }
    return out


def prepare_model(loaded: Loaded, run: RunOptions) -> None:
    """Check the run options and put the model on its device, in its dtype, int8 or compiled as asked."""
    if run.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {run.batch_size}")
    prepare_for_inference(loaded.model, resolve_device(run.device), run.dtype, run.quantize, run.compile)


def earlier_samples(out: Path, n: int) -> list[Path]:
    """The files of an earlier run where this run's `n` samples would go: `out` itself, files named sample_000...
    in the folder `out` (music, images, text), or NAME_000... beside `out` = NAME.mid. The modality's write
    would refuse them too, but only after sampling: found here, before it (a little stricter than the write,
    which may name its files by label or suffix)."""
    if out.is_file() and n == 1:
        return [out]  # several samples go to NAME_000... (their modality's output_files names it if they go into NAME)
    folder, prefix = (out, SAMPLE_STEM) if out.is_dir() else (out.parent, out.stem)
    if not folder.is_dir() or (folder == out.parent and n == 1):
        return []
    stems = {numbered(prefix, i) for i in range(n)}  # named as Request.out_stems names them
    stem_of = re.compile(re.escape(prefix) + r"_\d+(?=[._])")
    return sorted(p for p in folder.iterdir() if (m := stem_of.match(p.name)) and m[0] in stems)


def existing_outputs(loaded: Loaded, request: Request) -> list[Path]:
    """Files that this run's samples would replace: an earlier run's (`earlier_samples`), and those the modality
    names before sampling (music's .musicxml and .png beside --out chorale.mid, a protein's CSV)."""
    earlier = earlier_samples(request.out_path(), request.num_samples)
    return earlier or [p for p in loaded.modality.output_files(loaded.tokenizer, request) if p.exists()]


def run_generate(loaded: Loaded, request: Request, run: RunOptions, echo: Callable[[str], None] | None = None) -> tuple[list[Sample], list[Path]]:
    """Sample `request.num_samples` sequences and write the modality's files under `request.out`; without
    one, the samples as text go to `echo` (the CLI's stdout; streamed as sampled where the modality streams)
    when given. Return the samples and the paths written."""
    if request.num_samples < 1:
        raise DataError(f"--num-samples must be >= 1, got {request.num_samples}")
    if request.out is not None and not request.overwrite and (earlier := existing_outputs(loaded, request)):
        raise DataError(f"{earlier[0]}: already exists; pass --overwrite to replace it, or choose another --out")
    prepare_model(loaded, run)
    planned = make_plan(loaded, request)
    samples = sample(loaded, planned, run.batch_size, run.compile, echo=echo if request.out is None else None, spec=drafting.from_run(loaded, run))
    if request.out is not None:
        return samples, loaded.modality.write(loaded.tokenizer, samples, planned.request, planned.plan)
    if echo is not None:  # a streamed sample is on the terminal already
        echo("\n" if planned.plan.streamer is not None else loaded.modality.show(loaded.tokenizer, samples, planned.request, planned.plan))
    return samples, []


def run_evaluate(loaded: Loaded, request: Request, run: RunOptions, data_paths: list[str] | None = None, stride: int | None = None) -> dict[str, Any]:
    """`arseq evaluate`: checks the options, prepares the model, returns the JSON report."""
    context = loaded.model.cfg.max_seq_len
    if request.num_samples < 0:
        raise DataError(f"--num-samples must be >= 0, got {request.num_samples}")
    if stride is not None and not 0 < stride <= context:
        raise DataError(f"--stride must be between 1 and the model's context ({context}), got {stride}")
    prepare_model(loaded, run)
    return evaluate(loaded, request, run, data_paths, stride)
