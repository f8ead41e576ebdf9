"""llama.cpp: one llama-cpp-python server process per GGUF model, started on demand.

Processes start on the first request for their model (a GGUF loads in well
under a second, the Python start-up dominates) and the least recently used
one stops once more than ``llamacpp_max_running`` run. Each is bound to
127.0.0.1 on a port of its own.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import OrderedDict
from pathlib import Path

import httpx

from gateway.catalog import ModelEntry
from gateway.engines.base import EngineState, EngineStatus, Lease, Upstream
from gateway.engines.process import Backoff, ProcessSpec, SupervisedProcess, free_port
from gateway.errors import EngineUnavailableError
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings

FAMILY = "llama.cpp"
_EXPECTED_STARTUP_S = 5.0


def llamacpp_argv(settings: Settings, model_id: str, gguf: Path, port: int) -> list[str]:
    threads = settings.llamacpp_threads or os.cpu_count() or 1
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        model_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(settings.llamacpp_n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
    ]


class LlamaCppEngine:
    """All llama.cpp processes of the gateway, one per GGUF model id."""

    family = FAMILY
    key = FAMILY

    def __init__(self, settings: Settings, http: httpx.AsyncClient, guard: ProcessGuard) -> None:
        self._settings = settings
        self._http = http
        self._guard = guard
        self._processes: OrderedDict[str, SupervisedProcess] = OrderedDict()  # LRU order
        self._locks: dict[str, asyncio.Lock] = {}
        self._eager: list[ModelEntry] = []

    def preload(self, entry: ModelEntry) -> None:
        """Start this model's process with the gateway rather than on first use."""
        self._eager.append(entry)

    async def start(self) -> None:
        for entry in self._eager[: self._settings.llamacpp_max_running]:
            await self._ensure_process(entry)

    async def stop(self) -> None:
        processes = list(self._processes.values())
        self._processes.clear()
        await asyncio.gather(*(p.stop() for p in processes))

    async def acquire(self, entry: ModelEntry, avoid: frozenset[str] = frozenset()) -> Lease:
        process = await self._ensure_process(entry)
        if not process.ready():
            # Starting (a first start takes a second) or restarting after a crash:
            # wait for it rather than bounce the client, up to the engine-wait setting.
            if not await process.wait_ready(self._settings.engine_wait_s):
                raise EngineUnavailableError(
                    f"The llama.cpp engine for '{entry.id}' is {process.state.value}; "
                    "retry shortly.",
                    retry_after_s=process.retry_after_s(),
                )
        return Lease(process.spec.name, Upstream(process.spec.base_url))

    def report_unreachable(self, replica: str) -> None:
        """One process per model: its supervisor sees it die and restarts it."""

    async def unload(self, entry: ModelEntry) -> None:
        process = self._processes.pop(entry.id, None)
        if process is not None:
            await process.stop()

    def ready(self) -> bool:
        eager_ids = [e.id for e in self._eager[: self._settings.llamacpp_max_running]]
        return all(i in self._processes and self._processes[i].ready() for i in eager_ids)

    def statuses(self) -> list[EngineStatus]:
        return [
            EngineStatus(
                name=f"{FAMILY}/{model_id}",
                engine=FAMILY,
                state=p.state,
                url=p.spec.base_url,
                pid=p.pid,
                restarts=p.restarts,
                models=(model_id,),
                detail=p.last_error,
            )
            for model_id, p in self._processes.items()
        ]

    def state_of(self, model_id: str) -> EngineState:
        process = self._processes.get(model_id)
        return process.state if process else EngineState.STOPPED

    async def _ensure_process(self, entry: ModelEntry) -> SupervisedProcess:
        process = self._processes.get(entry.id)
        if process is not None:
            self._processes.move_to_end(entry.id)
            return process
        lock = self._locks.setdefault(entry.id, asyncio.Lock())
        async with lock:
            process = self._processes.get(entry.id)
            if process is None:
                process = self._new_process(entry)
                self._processes[entry.id] = process
                process.start()
                await self._evict_beyond_limit()
            return process

    def _new_process(self, entry: ModelEntry) -> SupervisedProcess:
        if entry.weights is None:
            raise EngineUnavailableError(f"The model '{entry.id}' has no GGUF file.")
        port = free_port()
        settings = self._settings
        spec = ProcessSpec(
            name=f"{FAMILY}/{entry.id}",
            argv=llamacpp_argv(settings, entry.id, entry.weights, port),
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            port=port,
            health_path="/v1/models",
            startup_timeout_s=settings.llamacpp_startup_timeout_s,
            log_path=settings.data_root / "logs" / f"llamacpp-{entry.id}.log",
            expected_startup_s=_EXPECTED_STARTUP_S,
        )
        backoff = Backoff(settings.restart_backoff_initial_s, settings.restart_backoff_max_s)
        return SupervisedProcess(
            spec, self._http, backoff, settings.engine_stop_timeout_s, self._guard
        )

    async def _evict_beyond_limit(self) -> None:
        while len(self._processes) > self._settings.llamacpp_max_running:
            _, oldest = self._processes.popitem(last=False)
            await oldest.stop()
