"""The engine seam: plain dataclasses and one protocol, no HTTP framework types."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gateway.catalog import ModelEntry


class EngineState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    UNREACHABLE = "unreachable"  # taken out of routing until its health check passes
    STOPPED = "stopped"


@dataclass(frozen=True)
class Upstream:
    """Where to send one request: an OpenAI-compatible base URL and its headers.

    ``body_fields`` are JSON members the engine needs added to the request body
    (llama-server's ``"lora": [...]``, which picks a request's adapter); most
    engines need none, and their bodies go out untouched."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    body_fields: bytes = b""

    def body_for(self, body: bytes) -> bytes:
        return with_json_member(body, self.body_fields) if self.body_fields else body


def with_json_member(body: bytes, member: bytes) -> bytes:
    """``body`` (a JSON object) with ``member`` (``"key":value``) added: spliced in before
    the closing brace, without parsing the body. A body that already has the key (sent
    by the client) is parsed and rewritten, so the client's value never reaches the engine."""
    key = member[: member.index(b":")]
    if key in body:
        payload = json.loads(body)
        payload.update(json.loads(b"{" + member + b"}"))
        return json.dumps(payload).encode()
    head = body[: body.rindex(b"}")].rstrip()
    return head + (b"" if head.endswith(b"{") else b",") + member + b"}"


@dataclass
class Lease:
    """One request's place on one replica: where to send it, and a way to say it is done.

    The replica counts the request as in flight until ``done`` is called (once;
    more calls do nothing), which the forwarder does when the answer has been
    relayed to its end."""

    replica: str
    upstream: Upstream
    on_done: Callable[[], None] = lambda: None
    _open: bool = True

    def done(self) -> None:
        if self._open:
            self._open = False
            self.on_done()


@dataclass(frozen=True)
class EngineStatus:
    """One engine process or replica, as ``/ready``, ``/metrics`` and ``/v1/models`` show it."""

    name: str
    engine: str
    state: EngineState
    url: str | None = None
    pid: int | None = None
    restarts: int = 0
    models: tuple[str, ...] = ()
    detail: str | None = None
    in_flight: int = 0
    requests: int = 0
    adapters: tuple[str, ...] = ()
    adapter_loads: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "engine": self.engine,
            "state": self.state.value,
            "url": self.url,
            "pid": self.pid,
            "restarts": self.restarts,
            "models": list(self.models),
            "detail": self.detail,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "adapters": list(self.adapters),
        }

    def replica_view(self) -> dict[str, object]:
        """The part a ``/v1/models`` entry shows (no ports, pids or logs)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "adapters": list(self.adapters),
        }


class Engine(Protocol):
    """One engine: a set of replicas of a base (vLLM), or a pool of processes (llama.cpp).

    A replica is a process the gateway runs or a server it was given the URL of."""

    key: str
    family: str

    async def start(self) -> None:
        """Begin serving; returns at once, readiness is reported by ``statuses``."""

    async def stop(self) -> None:
        """Stop serving and leave no process behind."""

    async def acquire(self, entry: ModelEntry, avoid: frozenset[str] = frozenset()) -> Lease:
        """A replica for one request on ``entry`` (its adapter loaded there), not one
        named in ``avoid``. While no replica is up but one is starting, waits for it
        up to the engine-wait setting; then raises ``EngineUnavailableError``."""

    def report_unreachable(self, replica: str) -> None:
        """A request could not reach ``replica``: take it out of routing until its
        health check passes again."""

    async def unload(self, entry: ModelEntry) -> None:
        """Stop serving ``entry`` (unload an adapter everywhere, stop a model's process)."""

    def statuses(self) -> list[EngineStatus]: ...

    def ready(self) -> bool:
        """True when the engine can answer requests now (for a replica set: at least
        one replica can)."""
