"""Prometheus metrics of one gateway, in a registry of its own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tunegate_requests",
            "Inference requests answered, by model, engine and HTTP status.",
            ("model", "engine", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "tunegate_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ("model", "engine"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "tunegate_requests_in_flight",
            "Inference requests being answered now.",
            ("model", "engine"),
            registry=self.registry,
        )
        self.engine_up = Gauge(
            "tunegate_engine_up",
            "1 when the engine answers requests, 0 otherwise.",
            ("engine",),
            registry=self.registry,
        )
        self.engine_restarts = Gauge(
            "tunegate_engine_restarts",
            "Restarts of the engine since the gateway started.",
            ("engine",),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
