"""llama.cpp: one ``llama-server`` process per GGUF model, started on demand.

``llama-server`` is llama.cpp's own server, built by ``make setup`` from the
llama.cpp sources vendored in the pinned llama-cpp-python, so the server, the
GGUF converter and the quantiser are one llama.cpp version. Each process
decodes up to ``llamacpp_parallel`` requests at once (slots, batched
together); its KV cache is sized so that every slot keeps a whole
``llamacpp_n_ctx`` context.

Processes start on the first request for their model (a GGUF loads in well
under a second) and the least recently used one stops once more than
``llamacpp_max_running`` run. Each is bound to 127.0.0.1 on a port of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import OrderedDict
from pathlib import Path

import httpx
from prometheus_client.metrics_core import Metric

from gateway.catalog import ModelEntry
from gateway.engines.base import EngineState, EngineStatus, Lease, Upstream
from gateway.engines.chat_templates import llamacpp_template_args
from gateway.engines.process import Backoff, ProcessSpec, SupervisedProcess, free_port
from gateway.errors import EngineUnavailableError, TunegateError
from gateway.metrics import relabelled_families
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings

log = logging.getLogger(__name__)

FAMILY = "llama.cpp"
_EXPECTED_STARTUP_S = 2.0
# Where ``make setup`` builds llama-server: under the venv, next to the converter.
DEFAULT_SERVER_BIN = (
    Path(sys.prefix) / "share" / "tunegate" / "llama.cpp" / "build" / "bin" / "llama-server"
)
# llama-server's metric names start with "llamacpp:"; the gateway re-exposes them as its own.
_ENGINE_METRIC_PREFIX = "llamacpp:"
_GATEWAY_METRIC_PREFIX = "tunegate_llamacpp_"
_SCRAPE_TIMEOUT_S = 2.0
# llama-server closes the connection after every streamed answer without saying so
# (no "Connection: close"). A pooled connection reused before its close is seen fails
# with "Server disconnected"; asking for the close up front keeps none in the pool.
# A new connection on 127.0.0.1 costs a fraction of a millisecond.
_REQUEST_HEADERS = {"Connection": "close"}
_MISSING_SERVER_LOG = (
    "llama-server not found at %s: GGUF models cannot be served. Build it with `make setup` "
    "(needs a C/C++ compiler and cmake), set llamacpp_server_bin, or set llamacpp_enabled=false."
)


def server_bin(settings: Settings) -> Path:
    return settings.llamacpp_server_bin or DEFAULT_SERVER_BIN


def llamacpp_argv(settings: Settings, model_id: str, gguf: Path, port: int) -> list[str]:
    threads = settings.llamacpp_threads or os.cpu_count() or 1
    parallel = settings.llamacpp_parallel
    return [
        str(server_bin(settings)),
        "--model",
        str(gguf),
        "--alias",
        model_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # -c is the KV cache of all slots together; each slot gets -c / --parallel.
        "--ctx-size",
        str(settings.llamacpp_n_ctx * parallel),
        "--parallel",
        str(parallel),
        "--no-kv-unified",
        "--cache-ram",
        str(settings.llamacpp_prompt_cache_mib),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--metrics",
        "--no-webui",
        *llamacpp_template_args(settings, gguf),  # the template tool calls are trained with
        *settings.llamacpp_extra_args,
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
        if not server_bin(self._settings).is_file():
            # Serve the other engines; GGUF models answer 500 with the reason.
            log.error(_MISSING_SERVER_LOG, server_bin(self._settings))
            return
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
        return Lease(process.spec.name, Upstream(process.spec.base_url, dict(_REQUEST_HEADERS)))

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

    async def metric_families(self) -> list[Metric]:
        """The metrics of every running llama-server, each sample labelled with its model."""
        running = [(i, p) for i, p in self._processes.items() if p.ready()]
        texts = await asyncio.gather(*(self._scrape(p) for _, p in running))
        reports = [
            (text, {"model": model_id})
            for (model_id, _), text in zip(running, texts, strict=True)
            if text
        ]
        return relabelled_families(reports, _ENGINE_METRIC_PREFIX, _GATEWAY_METRIC_PREFIX)

    async def _scrape(self, process: SupervisedProcess) -> str:
        try:
            response = await self._http.get(
                process.spec.base_url + "/metrics", timeout=_SCRAPE_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            log.debug("%s: metrics not read: %s", process.spec.name, exc)
            return ""
        return response.text if response.status_code == 200 else ""

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
        settings = self._settings
        if not server_bin(settings).is_file():
            log.error(_MISSING_SERVER_LOG, server_bin(settings))
            raise TunegateError(
                "The llama.cpp engine is not installed on this gateway (llama-server is missing)."
            )
        port = free_port()
        spec = ProcessSpec(
            name=f"{FAMILY}/{entry.id}",
            argv=llamacpp_argv(settings, entry.id, entry.weights, port),
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            port=port,
            health_path="/health",  # 503 while the model loads, 200 once it answers
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
