"""The engine seam: plain dataclasses and one protocol, no HTTP framework types."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gateway.catalog import ModelEntry


class EngineState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Upstream:
    """Where to send one request: an OpenAI-compatible base URL and its headers."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineStatus:
    name: str
    engine: str
    state: EngineState
    url: str | None = None
    pid: int | None = None
    restarts: int = 0
    models: tuple[str, ...] = ()
    detail: str | None = None

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
        }


class Engine(Protocol):
    """One engine instance (a process the gateway runs, or a remote server)."""

    key: str
    family: str

    async def start(self) -> None:
        """Begin serving; returns at once, readiness is reported by ``statuses``."""

    async def stop(self) -> None:
        """Stop serving and leave no process behind."""

    async def upstream_for(self, entry: ModelEntry) -> Upstream:
        """The upstream for ``entry``; raises ``EngineUnavailableError`` while it is down."""

    async def release(self, entry: ModelEntry) -> None:
        """Stop serving ``entry`` (unload an adapter, stop a model's process)."""

    def statuses(self) -> list[EngineStatus]: ...

    def ready(self) -> bool:
        """True when the engine can answer requests now."""
