"""Everything one gateway owns, built in the app's lifespan and kept on ``app.state``.

Engines are built from a table keyed by engine family, so a new engine is a
new row. Startup order: data root (locked, and cleared of processes a previous
gateway left running), embedded checkpoint, model table, engines (started in
the background: the gateway answers /health at once, /ready when engines are
up, and a request for a model whose engine is starting waits for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from adapters.registry import AdapterRegistry
from gateway import stream_client
from gateway.adapter_service import AdapterService
from gateway.base_models import base_model_specs, prepare_embedded_checkpoint
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine, EngineStatus
from gateway.engines.chat_templates import checkpoint_template
from gateway.engines.llamacpp import LlamaCppEngine
from gateway.engines.vllm import VllmReplicaSet
from gateway.finetune.database import open_database
from gateway.finetune.files import FileStore
from gateway.finetune.jobs_store import JobStore
from gateway.finetune.merges import MergeService
from gateway.finetune.service import FineTuningService
from gateway.forwarding import Forwarder, RequestLimits, StreamOpener
from gateway.gguf_bases import GgufOnlyBases
from gateway.loop_watch import LoopWatch
from gateway.metrics import GatewayMetrics
from gateway.model_names import OpenAINames
from gateway.process_guard import ProcessGuard
from gateway.settings import BaseModelSpec, Settings

log = logging.getLogger(__name__)

# Engines are local processes or servers the user named: a connect is quick or refused.
_CONNECT_TIMEOUT_S = 5.0


@dataclass
class GatewayRuntime:
    settings: Settings
    http: httpx.AsyncClient
    metrics: GatewayMetrics
    catalog: ModelCatalog
    engines: dict[str, Engine]
    forwarder: Forwarder
    adapters: AdapterService
    fine_tuning: FineTuningService
    merges: MergeService
    guard: ProcessGuard
    loop_watch: LoopWatch
    # The lean client's kept-alive engine connections (none where tests use httpx fakes).
    upstream: stream_client.UpstreamClient | None = None
    # Bases given only as a GGUF, their HF checkpoints derived for training in the background.
    gguf_bases: GgufOnlyBases | None = None

    def engine_statuses(self) -> list[EngineStatus]:
        return [status for engine in self.engines.values() for status in engine.statuses()]

    async def refresh_readiness(self) -> bool:
        """Every engine can answer: for a replica set, at least one replica of it."""
        for engine in self.engines.values():
            refresh = getattr(engine, "refresh", None)
            if refresh is not None:
                await refresh()
        ready = bool(self.engines) and all(e.ready() for e in self.engines.values())
        self.metrics.observe_engines(self.engine_statuses())
        return ready

    def replicas_of(self, entry: ModelEntry) -> list[dict[str, object]]:
        """Per-replica detail for ``/v1/models``: the replicas that serve a base, or
        those that hold an adapter now."""
        engine = self.engines.get(entry.engine_key)
        if engine is None:
            return []
        statuses = engine.statuses()
        if entry.kind == "adapter":
            return [s.replica_view() for s in statuses if entry.id in s.adapters]
        return [s.replica_view() for s in statuses if entry.id in s.models]

    async def refresh_engine_metrics(self) -> None:
        """Read what the engines report about themselves (llama-server's metrics) into
        the gateway's /metrics: engines listen on 127.0.0.1 only, out of a scraper's reach."""
        reports = await asyncio.gather(
            *(
                engine.metric_families()  # type: ignore[attr-defined]
                for engine in self.engines.values()
                if hasattr(engine, "metric_families")
            )
        )
        self.metrics.set_engine_families([family for report in reports for family in report])

    async def close(self) -> None:
        await self.loop_watch.stop()
        await self.fine_tuning.stop()
        await self.merges.stop()
        if self.gguf_bases is not None:
            await self.gguf_bases.stop()
        await asyncio.gather(*(e.stop() for e in self.engines.values()), return_exceptions=True)
        await self.http.aclose()
        if self.upstream is not None:
            self.upstream.close()
        self.guard.release()


def _new_http_client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.upstream_timeout_s, connect=_CONNECT_TIMEOUT_S),
        limits=httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
            # Below the engines' own keep-alive timeout (vLLM's and llama.cpp's uvicorn and
            # llama-server close idle connections after 5 s), so that a connection is not
            # reused in the instant the engine closes it.
            keepalive_expiry=4.0,
        ),
        # Engines are local processes (or a URL the user gave): never a proxy from the env.
        trust_env=False,
    )


class _EngineSetBuilder:
    """Adds each base model's rows to the catalog and creates the engines that serve them."""

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        catalog: ModelCatalog,
        guard: ProcessGuard,
    ) -> None:
        self.settings = settings
        self.http = http
        self.catalog = catalog
        self.guard = guard
        self.engines: dict[str, Engine] = {}
        self._llamacpp: LlamaCppEngine | None = None

    def add_base(self, spec: BaseModelSpec) -> None:
        for has_weights, add in self._rows():
            if has_weights(spec):
                add(spec)

    def _rows(
        self,
    ) -> list[tuple[Callable[[BaseModelSpec], bool], Callable[[BaseModelSpec], None]]]:
        return [
            (lambda s: s.hf_dir is not None and self.settings.vllm_enabled, self._add_vllm),
            (lambda s: s.gguf is not None and self.settings.llamacpp_enabled, self._add_llamacpp),
        ]

    def _add_vllm(self, spec: BaseModelSpec) -> None:
        assert spec.hf_dir is not None
        engine = VllmReplicaSet(self.settings, spec, self.http, self.guard)
        self.engines[engine.key] = engine
        self.catalog.add(
            ModelEntry(
                id=spec.id,
                kind="base",
                engine=engine.family,
                engine_key=engine.key,
                weights=spec.hf_dir,
                owned_by=spec.owned_by,
                # The setting's parser, or that of the template it serves with (the embedded
                # model's: tunegate's tool template, read by "hermes").
                extra={"tool_call_parser": checkpoint_template(spec).parser},
            )
        )

    def _add_llamacpp(self, spec: BaseModelSpec) -> None:
        assert spec.gguf is not None
        if self._llamacpp is None:
            self._llamacpp = LlamaCppEngine(self.settings, self.http, self.guard)
            self.engines[self._llamacpp.key] = self._llamacpp
        # With vLLM off, the GGUF answers to the base's own id too (its `-gguf` id an alias).
        own_id = not self.settings.vllm_enabled and not spec.gguf_id
        entry = ModelEntry(
            id=spec.id if own_id else spec.served_gguf_id,
            kind="base",
            engine=LlamaCppEngine.family,
            engine_key=LlamaCppEngine.key,
            weights=spec.gguf,
            owned_by=spec.owned_by,
        )
        self.catalog.add(entry, alias=spec.served_gguf_id)
        self._llamacpp.add_base(entry, spec.id, spec.hf_dir)  # its adapters run on it
        self._llamacpp.preload(entry)


def assemble_runtime(
    settings: Settings,
    http: httpx.AsyncClient,
    catalog: ModelCatalog,
    engines: dict[str, Engine],
    base_dirs: dict[str, Path],
    guard: ProcessGuard,
    open_answer: StreamOpener | None = None,
) -> GatewayRuntime:
    """The services around a model table and its engines: adapters, forwarding, files,
    fine-tuning and merges. Nothing is started here (tests assemble fakes the same way,
    and their answers go through ``http``)."""
    catalog.openai_names = OpenAINames.from_settings(settings)
    registry = AdapterRegistry(
        settings.adapters_dir,
        import_roots=settings.adapter_import_dirs,
        bases=base_dirs,
        max_rank=settings.vllm_max_lora_rank,
    )
    adapters = AdapterService(registry, catalog, engines)
    adapters.load_registered()
    metrics = GatewayMetrics()
    forwarder = Forwarder(
        catalog, engines, http, metrics, RequestLimits.from_settings(settings), open_answer
    )
    database = open_database(settings.data_root / "jobs.sqlite")
    merges = MergeService(settings, database, adapters, catalog, engines, base_dirs, guard)
    adapters.remove_dependents_with("merged", merges.remove)
    fine_tuning = FineTuningService(
        settings,
        JobStore(database),
        FileStore(database, settings.data_root / "files", settings.max_upload_bytes),
        adapters,
        catalog,
        forwarder,
        base_dirs=base_dirs,
        merges=merges,
        guard=guard,
    )
    return GatewayRuntime(
        settings=settings,
        http=http,
        metrics=metrics,
        catalog=catalog,
        engines=engines,
        forwarder=forwarder,
        adapters=adapters,
        fine_tuning=fine_tuning,
        merges=merges,
        guard=guard,
        loop_watch=LoopWatch(metrics.loop_stalls.observe),
    )


async def build_runtime(settings: Settings) -> GatewayRuntime:
    settings.data_root.mkdir(parents=True, exist_ok=True)
    guard = ProcessGuard(settings.data_root)
    stopped = guard.claim()
    if stopped:
        log.warning("stopped %d process(es) a previous gateway left running", len(stopped))
    if settings.embedded_model:  # vLLM serves it; the tuner and LoRA conversion read it
        await prepare_embedded_checkpoint(settings, guard)
    http = _new_http_client(settings)
    catalog = ModelCatalog()
    builder = _EngineSetBuilder(settings, http, catalog, guard)
    specs = base_model_specs(settings)
    for spec in specs:
        builder.add_base(spec)
    base_dirs = {s.id: s.hf_dir for s in specs if s.hf_dir is not None}
    upstream = stream_client.UpstreamClient(
        connect_timeout_s=_CONNECT_TIMEOUT_S,
        read_timeout_s=settings.upstream_timeout_s,
        tls=httpx.create_ssl_context(trust_env=False),  # as the httpx client's
        max_idle=settings.upstream_max_connections,
    )
    runtime = assemble_runtime(
        settings, http, catalog, builder.engines, base_dirs, guard, upstream.open
    )
    runtime.upstream = upstream
    runtime.gguf_bases = GgufOnlyBases(
        settings,
        guard,
        catalog,
        builder.engines.get("llama.cpp"),
        base_dirs,  # type: ignore[arg-type]
    )
    runtime.gguf_bases.start(specs)
    runtime.loop_watch.start()
    runtime.merges.start()
    runtime.fine_tuning.start()
    for engine in builder.engines.values():
        await engine.start()
    log.info("serving %s", ", ".join(e.id for e in catalog.entries()))
    return runtime
