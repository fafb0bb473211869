"""Prometheus metrics of one server, in a registry of its own (several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("arseq_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"], registry=r)
        self.rejected = Counter("arseq_requests_rejected", "requests refused before decoding, by reason", ["reason"], registry=r)
        self.cancelled = Counter("arseq_requests_cancelled", "requests ended early, by reason", ["reason"], registry=r)
        self.requests_running = Gauge("arseq_requests_running", "requests with rows decoding", registry=r)
        self.requests_waiting = Gauge("arseq_requests_waiting", "requests queued, no token chosen yet", registry=r)
        self.rows_active = Gauge("arseq_rows_active", "engine rows decoding (slots in use)", registry=r)
        self.rows_waiting = Gauge("arseq_rows_waiting", "engine rows waiting for a slot", registry=r)
        self.tokens = Counter("arseq_generated_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("arseq_time_to_first_token_seconds", "from a request's arrival to its first token", buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("arseq_inter_token_latency_seconds", "between two tokens of one sample", buckets=TOKEN_BUCKETS, registry=r)
        self.latency = Histogram("arseq_request_latency_seconds", "from a request's arrival to its last token", buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
