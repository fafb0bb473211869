"""From a request to what the decode engine runs: the modality plans (prompts, sampling defaults, a constraint);
the core fits the prompts to the context, resolves the sampling settings and adds the condition tokens, keeping
what it adds in its own object (`Planned`) so that the modality's `Plan` and the user's `Request` stay as given."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from arseq.artifacts.checkpoint import Loaded
from arseq.decode import Constraint, SamplingConfig
from arseq.decode.infill import Fim, hide_sentinels
from arseq.modalities import DataError, Modality, Plan, Request, SamplingOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Planned:
    """A request ready to sample: the modality's plan as it answered, and the core's additions."""

    request: Request  # as the modality saw it (its options filled in with their defaults)
    plan: Plan  # the modality's answer, untouched
    cfg: SamplingConfig  # the core's defaults, then the modality's, then the request's
    prompts: list[list[int]]  # fitted to the context, condition tokens after BOS
    conditions: list[dict[str, str]]  # per prompt: the condition values sampled with ({} unconditioned)
    guide: list[list[int]] | None  # with guidance: each prompt with its conditions unknown
    constraint: Callable[[], Constraint] | None  # the modality's, blind to the condition tokens


def fit_prompts(modality: Modality, tok: Any, prompts: list[list[int]], context: int, max_new_tokens: int) -> list[list[int]]:
    """Cut prompts longer than the context to what fits with room to generate, saying so once per prompt."""
    room = max(1, min(max_new_tokens, context // 4))
    fitted: dict[tuple[int, ...], list[int]] = {}
    for p in prompts:
        if len(p) > context and tuple(p) not in fitted:
            kept, what = modality.fit_prompt(tok, list(p), context - room)
            log.warning(f"arseq: the prompt is {len(p)} tokens, more than the model's context of {context}; kept {what} ({len(kept)} tokens)")
            fitted[tuple(p)] = kept
    return [fitted.get(tuple(p), p) for p in prompts]


def make_plan(loaded: Loaded, request: Request) -> Planned:
    """The modality's plan for a request, its prompts fitted to the context, and the sampling settings."""
    tok, modality = loaded.tokenizer, loaded.modality
    controls = loaded.controls
    if request.conditions and controls is None:
        raise DataError(f"--cond {request.conditions[0]}: this model was trained without conditions")
    options = request.options
    if modality.generate_options is not None and not isinstance(options, modality.generate_options):
        options = modality.generate_options()
    width = controls.width if controls is not None else 0
    fim = Fim.from_dict(loaded.meta.fim)  # infilling options need it; None: a model without FIM
    request = replace(
        request,
        options=options,
        condition_values=dict(controls.fields) if controls is not None else {},
        fim=fim,
        context=loaded.model.cfg.max_seq_len - width,
        item_tokens=loaded.meta.item_tokens,
    )
    plan = modality.plan(tok, request)
    conditions = [dict(values) for values in plan.conditions or [{}] * len(plan.prompts)]
    if controls is not None:
        given = controls.given(request.conditions)
        conditions = [{**values, **given} for values in conditions]
    defaults = {**plan.sampling, **modality.conditioned_sampling} if controls is not None and any(conditions) else plan.sampling
    try:
        cfg = request.sampling.resolve(defaults, (tok.eos_id,))
    except ValueError as e:  # SamplingConfig's checks start with the option's name, which is the flag's
        name, _, rest = str(e).partition(" ")
        known = name in {f.name for f in fields(SamplingOptions)}
        raise DataError(f"--{name.replace('_', '-')} {rest}" if known else f"sampling: {e}") from None
    if plan.new_tokens is not None:
        cfg = replace(cfg, max_new_tokens=plan.new_tokens)
    prompts = fit_prompts(modality, tok, plan.prompts, loaded.model.cfg.max_seq_len - width, cfg.max_new_tokens)
    guide, constraint = None, plan.constraint
    if controls is not None:  # the conditions after BOS; the modality's constraint never sees them
        for name, value in {kv for values in conditions for kv in values.items()}:
            controls.check(name, value, f"the {modality.name} options' condition {name}={value}")
        if cfg.guidance != 1.0:
            if not any(conditions):
                raise DataError("--guidance: no condition to follow; give --cond FIELD=VALUE (or the modality's own, e.g. --label)")
            guide = [controls.insert(p, controls.ids({})) for p in prompts]
        prompts = [controls.insert(p, controls.ids(values)) for p, values in zip(prompts, conditions)]
        inner = plan.constraint
        constraint = lambda: controls.hide(inner() if inner is not None else None)  # noqa: E731
    elif cfg.guidance != 1.0:
        raise DataError("--guidance: this model was trained without conditions")
    if fim is not None:  # a FIM model never samples its sentinels
        made = constraint
        constraint = lambda: hide_sentinels(made() if made is not None else None, fim)  # noqa: E731
    return Planned(request, plan, cfg, prompts, conditions, guide, constraint)
