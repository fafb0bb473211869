"""Prometheus metrics of one server, in a registry of its own (several servers can live in one process).

A server may serve several models (`arseq serve --checkpoint a=... --checkpoint b=...`): what an engine counts
(its rows, tokens, latencies, refusals) carries a `model` label, so each model's load can be told apart on one
/metrics; `arseq_requests_total{endpoint,status}` is the HTTP side's and counts requests before they name a model.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# Metrics' attributes counted per model (labelled `model` first), as an engine loop writes them (ModelMetrics)
PER_MODEL = ("rejected", "cancelled", "requests_running", "requests_waiting", "rows_active", "rows_waiting", "tokens", "ttft", "itl", "latency")
BY_REASON = ("rejected", "cancelled")  # labelled by reason too: a reason's series appears when it first happens


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        m = ["model"]
        self.requests = Counter("arseq_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r)
        self.rejected = Counter("arseq_requests_rejected", "requests refused before decoding, by reason", [*m, "reason"], registry=r)
        self.cancelled = Counter("arseq_requests_cancelled", "requests ended early, by reason", [*m, "reason"], registry=r)
        self.requests_running = Gauge("arseq_requests_running", "requests with rows decoding", m, registry=r)
        self.requests_waiting = Gauge("arseq_requests_waiting", "requests queued, no token chosen yet", m, registry=r)
        self.rows_active = Gauge("arseq_rows_active", "engine rows decoding (slots in use)", m, registry=r)
        self.rows_waiting = Gauge("arseq_rows_waiting", "engine rows waiting for a slot", m, registry=r)
        self.tokens = Counter("arseq_generated_tokens", "tokens generated", m, registry=r)
        self.ttft = Histogram(
            "arseq_time_to_first_token_seconds", "from a request's arrival to its first token", m, buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram("arseq_inter_token_latency_seconds", "between two tokens of one sample", m, buckets=TOKEN_BUCKETS, registry=r)
        self.latency = Histogram(
            "arseq_request_latency_seconds", "from a request's arrival to its last token", m, buckets=LATENCY_BUCKETS, registry=r
        )

    def of(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """One model's view of Metrics: the names and calls an engine loop makes (`tokens.inc()`,
    `cancelled.labels("timeout").inc()`), each filled in with the model's label, so the loop need not know it."""

    def __init__(self, metrics: Metrics, model: str):
        for name in PER_MODEL:
            metric = getattr(metrics, name)
            if name not in BY_REASON:  # shown from the start (0), not from the model's first request
                metric.labels(model)
            setattr(self, name, _Labelled(metric, model))


class _Labelled:
    """A metric with its first label (the model) given: `labels` takes the rest."""

    def __init__(self, metric: Any, model: str):
        self.metric, self.model = metric, model

    def labels(self, *values: str) -> Any:
        return self.metric.labels(self.model, *values)

    def inc(self, amount: float = 1) -> None:
        self.metric.labels(self.model).inc(amount)

    def observe(self, value: float) -> None:
        self.metric.labels(self.model).observe(value)

    def set(self, value: float) -> None:
        self.metric.labels(self.model).set(value)
