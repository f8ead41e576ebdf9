"""Prometheus metrics of one gateway, in a registry of its own (no global state).

Engines bound to 127.0.0.1 cannot be scraped from outside, so the gateway
re-exposes what they report (llama-server's ``llamacpp:*``) on its own
``/metrics``, renamed under ``tunegate_`` and labelled with the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.engines.base import EngineState, EngineStatus

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class ModelMetrics:
    """One model's request metrics, its children looked up once: ``labels()`` takes a
    lock and builds a key on every call, which the hot path would pay four times."""

    model: str
    engine: str
    in_flight: Gauge
    latency: Histogram
    requests: Counter  # the parent: one child per status, made on first use
    _by_status: dict[int, Counter] = field(default_factory=dict)

    def answered(self, status: int) -> Counter:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self.requests.labels(self.model, self.engine, str(status))
            self._by_status[status] = counter
        return counter


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
        self.replica_in_flight = Gauge(
            "tunegate_replica_requests_in_flight",
            "Requests a replica (an engine process or server) is answering now.",
            ("engine",),
            registry=self.registry,
        )
        self.replica_requests = Gauge(
            "tunegate_replica_requests_routed",
            "Requests routed to a replica since the gateway started.",
            ("engine",),
            registry=self.registry,
        )
        self.replica_adapters = Gauge(
            "tunegate_replica_adapters_loaded",
            "Adapters loaded in a replica now.",
            ("engine",),
            registry=self.registry,
        )
        self.replica_adapter_loads = Gauge(
            "tunegate_replica_adapter_loads",
            "Adapter loads into a replica since the gateway started.",
            ("engine",),
            registry=self.registry,
        )
        self.replica_state = Gauge(
            "tunegate_replica_state",
            "1 for the state a replica is in (starting, ready, restarting, unreachable...).",
            ("engine", "state"),
            registry=self.registry,
        )
        self.loop_stalls = Histogram(
            "tunegate_event_loop_stall_seconds",
            "Times the gateway's event loop was held for a second or more, and for how long.",
            buckets=(1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self._engine_families = _EngineFamilies()
        self.registry.register(self._engine_families)
        self._per_model: dict[tuple[str, str], ModelMetrics] = {}

    def of_model(self, model: str, engine: str) -> ModelMetrics:
        """The request metrics of one model on one engine, made on its first request."""
        found = self._per_model.get((model, engine))
        if found is None:
            found = self._per_model[(model, engine)] = ModelMetrics(
                model,
                engine,
                self.in_flight.labels(model, engine),
                self.latency.labels(model, engine),
                self.requests,
            )
        return found

    def observe_engines(self, statuses: Iterable[EngineStatus]) -> None:
        """The engines' and replicas' state, read when /metrics or /ready is asked."""
        for status in statuses:
            self.engine_up.labels(status.name).set(1 if status.state == "ready" else 0)
            self.engine_restarts.labels(status.name).set(status.restarts)
            self.replica_in_flight.labels(status.name).set(status.in_flight)
            self.replica_requests.labels(status.name).set(status.requests)
            self.replica_adapters.labels(status.name).set(len(status.adapters))
            self.replica_adapter_loads.labels(status.name).set(status.adapter_loads)
            for state in EngineState:
                self.replica_state.labels(status.name, state.value).set(
                    1 if status.state is state else 0
                )

    def set_engine_families(self, families: list[Metric]) -> None:
        """What the engines reported at the last scrape, shown until the next one."""
        self._engine_families.families = families

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineFamilies(Collector):
    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names vary with the engines running; none is reserved


def relabelled_families(
    expositions: Iterable[tuple[str, dict[str, str]]], prefix: str, new_prefix: str
) -> list[Metric]:
    """Parse Prometheus texts, keep the families named ``prefix*``, rename them to
    ``new_prefix*`` and add each text's labels to its samples. Families of the same
    name from several texts become one family (one HELP/TYPE line each)."""
    merged: dict[str, Metric] = {}
    for text, labels in expositions:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(prefix):
                continue
            name = new_prefix + family.name[len(prefix) :]
            target = merged.get(name)
            if target is None:
                target = merged[name] = Metric(name, family.documentation, family.type)
            for sample in family.samples:
                target.add_sample(
                    new_prefix + sample.name[len(prefix) :],
                    {**sample.labels, **labels},
                    sample.value,
                    sample.timestamp,
                )
    return list(merged.values())
