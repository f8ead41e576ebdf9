"""llama.cpp: one ``llama-server`` process per GGUF model, started on demand.

``llama-server`` is llama.cpp's own server, built by ``make setup`` from the
llama.cpp sources vendored in the pinned llama-cpp-python, so the server, the
GGUF converters and the quantiser are one llama.cpp version. Each process
decodes up to ``llamacpp_parallel`` requests at once (slots, batched
together); its KV cache is sized so that every slot keeps a whole
``llamacpp_n_ctx`` context.

Processes start on the first request for their model (a GGUF loads in well
under a second). Each is bound to 127.0.0.1 on a port of its own.

- **Adapters.** A base's process runs with the base's LoRA adapters loaded
  (``--lora``, one per adapter converted so far; see ``llamacpp_lora``), and each
  request names its adapter in the ``lora`` field. The adapter list of a
  llama-server is fixed at its start, so the first request for an adapter the
  running process lacks converts it, starts a new process with the new list,
  switches routing to it once it is healthy, and lets the old one drain: it
  stops when its last request ends. Deleting an adapter hands over the same way.
- **Leases.** Every request holds a lease on its process until its answer
  (streamed or not) has been relayed to the end.
- **LRU.** Once more than ``llamacpp_max_running`` processes run, the least
  recently used one *that has no request in flight* stops. When every other
  process is answering, none stops now: the first of them to fall idle does.
  So a live stream is never cut to make room.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.metrics_core import Metric

from gateway.catalog import ModelEntry
from gateway.engines.base import EngineState, EngineStatus, Lease, Upstream
from gateway.engines.chat_templates import gguf_template_choice, llamacpp_template_args
from gateway.engines.llamacpp_lora import ADAPTER_GGUF_FILE, convert_adapter, lora_field
from gateway.engines.process import Backoff, ProcessSpec, SupervisedProcess, free_port
from gateway.errors import (
    AdapterLoadError,
    EngineUnavailableError,
    ModelNotFoundError,
    TunegateError,
)
from gateway.metrics import relabelled_families
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings

log = logging.getLogger(__name__)

FAMILY = "llama.cpp"
_EXPECTED_STARTUP_S = 2.0
_START_POLL_S = 0.5  # how often a new process is checked for an exit while it starts
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


def llamacpp_argv(
    settings: Settings, model_id: str, gguf: Path, port: int, loras: Sequence[Path] = ()
) -> list[str]:
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
        *lora_args(loras),
        *settings.llamacpp_extra_args,
    ]


def lora_args(loras: Sequence[Path]) -> list[str]:
    """Adapters loaded at start, applied only where a request's ``lora`` field says so."""
    if not loras:
        return []
    return [arg for path in loras for arg in ("--lora", str(path))] + ["--lora-init-without-apply"]


@dataclass(frozen=True)
class GgufBase:
    """A GGUF model the engine serves, and the HF config + tokenizer its adapters are
    converted against (None: its adapters cannot be converted)."""

    entry: ModelEntry
    hf_dir: Path | None


@dataclass(eq=False)
class _Server:
    """One llama-server process: a GGUF model, the adapters it loaded, its live requests."""

    model_id: str
    process: SupervisedProcess
    adapters: tuple[str, ...] = ()
    live: int = 0
    retired: bool = False
    _fields: dict[str | None, bytes] = field(default_factory=dict)

    def serves(self, adapter: str | None) -> bool:
        return adapter is None or adapter in self.adapters

    def lora_field(self, adapter: str | None) -> bytes:
        """Made once per adapter and process: the hot path only splices bytes."""
        made = self._fields.get(adapter)
        if made is None:
            made = self._fields[adapter] = lora_field(self.adapters, adapter)
        return made


class LlamaCppEngine:
    """All llama.cpp processes of the gateway, one per GGUF model id."""

    family = FAMILY
    key = FAMILY

    def __init__(self, settings: Settings, http: httpx.AsyncClient, guard: ProcessGuard) -> None:
        self._settings = settings
        self._http = http
        self._guard = guard
        self._servers: OrderedDict[str, _Server] = OrderedDict()  # LRU order
        self._draining: set[_Server] = set()  # replaced or evicted, stopped once idle
        self._locks: dict[str, asyncio.Lock] = {}
        self._eager: list[ModelEntry] = []
        self._bases: dict[str, GgufBase] = {}  # GGUF model id -> base
        self._gguf_of: dict[str, str] = {}  # HF base id -> its GGUF model id
        self._adapters: dict[str, dict[str, ModelEntry]] = {}  # GGUF model id -> adapters
        self._conversions: dict[str, asyncio.Task[Path]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the model table's side ---------------------------------------------------
    def add_base(self, entry: ModelEntry, hf_id: str | None, hf_dir: Path | None) -> None:
        """A GGUF model; ``hf_id``/``hf_dir``: the HF base whose adapters run on it."""
        self._bases[entry.id] = GgufBase(entry, hf_dir)
        if hf_id is not None:
            self._gguf_of[hf_id] = entry.id

    def gguf_base_of(self, hf_id: str) -> ModelEntry | None:
        """The GGUF model that adapters of the base ``hf_id`` run on here, if any."""
        gguf_id = self._gguf_of.get(hf_id)
        return self._bases[gguf_id].entry if gguf_id is not None else None

    def add_adapter(self, entry: ModelEntry) -> None:
        """An adapter servable on ``entry.parent`` (a GGUF model id); loaded on first use."""
        self._adapters.setdefault(str(entry.parent), {})[entry.id] = entry

    def preload(self, entry: ModelEntry) -> None:
        """Start this model's process with the gateway rather than on first use."""
        self._eager.append(entry)

    # --- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        if not server_bin(self._settings).is_file():
            # Serve the other engines; GGUF models answer 500 with the reason.
            log.error(_MISSING_SERVER_LOG, server_bin(self._settings))
            return
        for entry in self._eager[: self._settings.llamacpp_max_running]:
            await self._ensure_server(entry, None)

    async def stop(self) -> None:
        for task in list(self._conversions.values()):
            task.cancel()
        servers = [*self._servers.values(), *self._draining]
        self._servers.clear()
        self._draining.clear()
        await asyncio.gather(*(s.process.stop() for s in servers))

    # --- requests -------------------------------------------------------------------
    async def acquire(self, entry: ModelEntry, avoid: frozenset[str] = frozenset()) -> Lease:
        model, adapter = self._target(entry)
        if adapter is not None:
            self._check_registered(model.id, adapter)  # resolved just before its delete
            await self._converted(entry)
        server = await self._ensure_server(model, adapter)
        if not server.serves(adapter):  # deleted meanwhile, or its file is gone
            raise AdapterLoadError(f"The adapter '{entry.id}' is not loaded on llama.cpp.")
        # Leased before anything else may run: an idle-looking server is never chosen
        # as a victim between here and the request's end.
        server.live += 1
        lease = Lease(
            server.process.spec.name,
            Upstream(
                server.process.spec.base_url,
                dict(_REQUEST_HEADERS),
                body_fields=server.lora_field(adapter),
            ),
            on_done=lambda: self._release(server),
        )
        try:
            await self._evict_beyond_limit()
            process = server.process
            if not process.ready() and not await process.wait_ready(self._settings.engine_wait_s):
                # Starting (a first start takes a second) or restarting after a crash:
                # waited for rather than bouncing the client, up to the engine-wait setting.
                raise EngineUnavailableError(
                    f"The llama.cpp engine for '{entry.id}' is {process.state.value}; "
                    "retry shortly.",
                    retry_after_s=process.retry_after_s(),
                )
        except BaseException:
            lease.done()
            raise
        return lease

    def report_unreachable(self, replica: str) -> None:
        """One process per model: its supervisor sees it die and restarts it."""

    async def unload(self, entry: ModelEntry) -> None:
        if entry.kind == "adapter":
            await self._drop_adapter(entry)
            return
        server = self._servers.pop(entry.id, None)
        if server is not None:
            self._retire(server)

    # --- status -------------------------------------------------------------------
    def ready(self) -> bool:
        eager_ids = [e.id for e in self._eager[: self._settings.llamacpp_max_running]]
        return all(i in self._servers and self._servers[i].process.ready() for i in eager_ids)

    def statuses(self) -> list[EngineStatus]:
        current = [self._status(s) for s in self._servers.values()]
        return current + [self._status(s, "draining") for s in self._draining]

    def _status(self, server: _Server, detail: str | None = None) -> EngineStatus:
        process = server.process
        return EngineStatus(
            name=process.spec.name,
            engine=FAMILY,
            state=process.state,
            url=process.spec.base_url,
            pid=process.pid,
            restarts=process.restarts,
            # A draining process no longer serves its model: new requests go elsewhere.
            models=() if server.retired else (server.model_id,),
            detail=detail or process.last_error,
            in_flight=server.live,
            adapters=() if server.retired else server.adapters,
        )

    async def metric_families(self) -> list[Metric]:
        """The metrics of every running llama-server, each sample labelled with its model."""
        running = [(i, s.process) for i, s in self._servers.items() if s.process.ready()]
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
        server = self._servers.get(model_id)
        return server.process.state if server else EngineState.STOPPED

    # --- processes ------------------------------------------------------------------
    def _target(self, entry: ModelEntry) -> tuple[ModelEntry, str | None]:
        """(the GGUF model whose process answers, the adapter or None)."""
        if entry.kind != "adapter":
            return entry, None
        base = self._bases.get(str(entry.parent))
        if base is None:
            raise AdapterLoadError(f"'{entry.id}' has no GGUF base on this gateway.")
        return base.entry, entry.id

    async def _ensure_server(self, model: ModelEntry, adapter: str | None) -> _Server:
        model_id = model.id
        server = self._servers.get(model_id)
        if server is not None and server.serves(adapter):
            self._servers.move_to_end(model_id)
            return server
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            server = self._servers.get(model_id)
            if server is not None and server.serves(adapter):
                self._servers.move_to_end(model_id)
                return server
            if adapter is not None:  # deleted while this request waited for the lock
                self._check_registered(model_id, adapter)
            fresh = await self._new_server_off_loop(model)
            if server is None:
                # Nothing to hand over from: route to it now, requests wait for it.
                self._servers[model_id] = fresh
                fresh.process.start()
                return fresh
            try:
                return await self._hand_over(server, fresh)
            except EngineUnavailableError:
                if adapter is not None:  # its file may be what llama-server cannot load:
                    self._forget_conversion(adapter, model_id)  # converted afresh next time
                raise

    async def _hand_over(self, old: _Server, fresh: _Server) -> _Server:
        """Start ``fresh`` beside ``old``; once it is healthy, route to it and drain ``old``."""
        fresh.process.start()
        try:
            started = await self._started(fresh.process)
        except BaseException:
            # The request that asked for it left: ``fresh`` is in neither ``_servers``
            # nor ``_draining``, so nothing else would ever stop it.
            await asyncio.shield(fresh.process.stop())
            raise
        if not started:
            reason = fresh.process.last_error or fresh.process.state.value
            await fresh.process.stop()
            raise EngineUnavailableError(
                f"The llama.cpp engine for '{old.model_id}' with its new adapters did not "
                f"start ({reason}); retry shortly.",
                retry_after_s=5,
            )
        if self._servers.get(old.model_id) is old:
            self._servers[old.model_id] = fresh
            self._servers.move_to_end(old.model_id)
            self._retire(old)
        else:  # evicted or unloaded while the new one started: serve with the new one
            self._servers[old.model_id] = fresh
        log.info(
            "%s: now serving adapters [%s] on pid %s",
            old.model_id,
            ", ".join(fresh.adapters),
            fresh.process.pid,
        )
        return fresh

    async def _started(self, process: SupervisedProcess) -> bool:
        """Healthy within the start-up timeout; False as soon as it exits while starting
        (an adapter it cannot load, say) rather than after its restarts."""
        deadline = time.monotonic() + self._settings.llamacpp_startup_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if await process.wait_ready(min(_START_POLL_S, left)):
                return True
            if process.restarts:
                return False
        return process.ready()

    async def _new_server_off_loop(self, model: ModelEntry) -> _Server:
        """``_new_server``, with the GGUF's chat template read in a thread first (it is
        cached by file): reading a GGUF's metadata, its whole vocabulary included, took
        5.4 s for a new merged model on a busy 2-core machine, and every request waited."""
        if model.weights is not None:
            await asyncio.to_thread(gguf_template_choice, model.weights)
        return self._new_server(model)

    def _new_server(self, model: ModelEntry) -> _Server:
        model_id = model.id
        if model.weights is None:
            raise EngineUnavailableError(f"The model '{model_id}' has no GGUF file.")
        settings = self._settings
        if not server_bin(settings).is_file():
            log.error(_MISSING_SERVER_LOG, server_bin(settings))
            raise TunegateError(
                "The llama.cpp engine is not installed on this gateway (llama-server is missing)."
            )
        adapters = self._loadable_adapters(model_id)
        port = free_port()
        spec = ProcessSpec(
            name=f"{FAMILY}/{model_id}",
            argv=llamacpp_argv(
                settings, model_id, model.weights, port, [path for _, path in adapters]
            ),
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            port=port,
            health_path="/health",  # 503 while the model loads, 200 once it answers
            startup_timeout_s=settings.llamacpp_startup_timeout_s,
            log_path=settings.data_root / "logs" / f"llamacpp-{model_id}.log",
            expected_startup_s=_EXPECTED_STARTUP_S,
        )
        backoff = Backoff(settings.restart_backoff_initial_s, settings.restart_backoff_max_s)
        process = SupervisedProcess(
            spec, self._http, backoff, settings.engine_stop_timeout_s, self._guard
        )
        return _Server(model_id, process, tuple(name for name, _ in adapters))

    def _loadable_adapters(self, model_id: str) -> list[tuple[str, Path]]:
        """The model's adapters converted so far, in the order they were registered."""
        found = []
        for adapter_id, entry in self._adapters.get(model_id, {}).items():
            gguf = Path(str(entry.weights)) / ADAPTER_GGUF_FILE
            if entry.weights is not None and gguf.is_file():
                found.append((adapter_id, gguf))
        return found

    # --- adapters -------------------------------------------------------------------
    async def _converted(self, entry: ModelEntry) -> Path:
        """The adapter's GGUF, converted once; a conversion outlives a request that left."""
        assert entry.weights is not None
        gguf = entry.weights / ADAPTER_GGUF_FILE
        if gguf.is_file():
            return gguf
        task = self._conversions.get(entry.id)
        if task is None:
            base = self._bases.get(str(entry.parent))
            if base is None or base.hf_dir is None:
                raise AdapterLoadError(
                    f"'{entry.id}' cannot run on llama.cpp: its base has no HF config here."
                )
            log_path = self._settings.data_root / "logs" / f"lora-gguf-{entry.id}.log"
            task = asyncio.create_task(
                convert_adapter(self._guard, entry.weights, base.hf_dir, log_path),
                name=f"convert-{entry.id}",
            )
            self._conversions[entry.id] = task
            task.add_done_callback(lambda _: self._conversions.pop(entry.id, None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                # Cancelled by the adapter's delete, not by this request leaving: a
                # CancelledError here would read as a shutdown to whoever awaits us.
                raise ModelNotFoundError(entry.id) from None
            raise

    def _check_registered(self, model_id: str, adapter: str) -> None:
        if adapter not in self._adapters.get(model_id, {}):
            raise ModelNotFoundError(adapter)

    def _forget_conversion(self, adapter: str, model_id: str) -> None:
        entry = self._adapters.get(model_id, {}).get(adapter)
        if entry is not None and entry.weights is not None:
            (entry.weights / ADAPTER_GGUF_FILE).unlink(missing_ok=True)

    async def _drop_adapter(self, entry: ModelEntry) -> None:
        """Stop serving an adapter: a process that loaded it hands over to one without it
        (its file is about to be deleted, and a restart would need it)."""
        model_id = str(entry.parent)
        self._adapters.get(model_id, {}).pop(entry.id, None)
        conversion = self._conversions.pop(entry.id, None)
        if conversion is not None:
            conversion.cancel()
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            server = self._servers.get(model_id)
            if server is None or entry.id not in server.adapters:
                return
            try:
                fresh = await self._new_server_off_loop(self._bases[model_id].entry)
                await self._hand_over(server, fresh)
            except TunegateError:
                # No new process: stop the old one once idle; the next request starts one.
                if self._servers.get(model_id) is server:
                    del self._servers[model_id]
                    self._retire(server)

    # --- leases and stopping ------------------------------------------------------------
    def _release(self, server: _Server) -> None:
        server.live -= 1
        if server.live:
            return
        if server.retired:
            self._spawn(self._stop_drained(server))
        elif len(self._servers) > self._settings.llamacpp_max_running:
            self._spawn(self._evict_beyond_limit())

    def _retire(self, server: _Server) -> None:
        """Out of routing; stopped now if idle, else when its last request ends."""
        server.retired = True
        self._draining.add(server)
        if server.live == 0:
            self._spawn(self._stop_drained(server))

    async def _stop_drained(self, server: _Server) -> None:
        if server in self._draining and server.live == 0:
            self._draining.discard(server)
            await server.process.stop()

    async def _evict_beyond_limit(self) -> None:
        """Stop the least recently used idle processes past the limit; a process with a
        request in flight is never stopped here (see the module's docstring)."""
        while len(self._servers) > self._settings.llamacpp_max_running:
            idle = next((s for s in self._servers.values() if s.live == 0), None)
            if idle is None:
                return  # every process is answering: the first to fall idle goes
            del self._servers[idle.model_id]
            self._retire(idle)

    def _spawn(self, work: object) -> None:
        task = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
