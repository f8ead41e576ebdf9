"""vLLM: a replica set per HF base model, of processes the gateway runs and/or external URLs.

A managed replica runs ``python -m vllm.entrypoints.openai.api_server`` (the
``vllm`` console script of the CPU build cannot read its own version), bound
to 127.0.0.1, pinned to its own GPUs or CPU cores, with LoRA enabled and
runtime adapter loading allowed. That loading API is unsafe to expose; only
the gateway reaches it. Inside a replica, vLLM's own tensor and pipeline
parallelism (and its Ray backend across nodes) do the multi-device work, from
``vllm_extra_args``; the gateway never shards a model itself.

Each request gets one replica from the routing policy (``gateway/engines/routing.py``).
A replica that cannot be reached is taken out at once and comes back when its
health check passes, with its adapters loaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path, PurePosixPath

import httpx

from gateway.catalog import ModelEntry
from gateway.engines.base import EngineStatus, Lease, Upstream
from gateway.engines.chat_templates import vllm_template_args
from gateway.engines.lora_slots import LoraSlots, same_path
from gateway.engines.placement import detect_device, replica_placements
from gateway.engines.process import Backoff, ProcessSpec, SupervisedProcess, free_port
from gateway.engines.routing import RoutingPolicy, make_policy
from gateway.engines.vllm_replicas import ManagedReplica, RemoteReplica, VllmReplica
from gateway.errors import (
    AdapterLoadError,
    EngineUnavailableError,
    ModelNotFoundError,
    ReplicaUnreachableError,
)
from gateway.process_guard import ProcessGuard
from gateway.settings import BaseModelSpec, Settings

log = logging.getLogger(__name__)

FAMILY = "vllm"
# vLLM on 2 CPU cores takes about 85 s to start a 135M model.
_EXPECTED_STARTUP_S = 90.0
# While some replica is out of routing, check health this often, so it rejoins soon.
_RECOVERY_CHECK_S = 1.0


def vllm_argv(settings: Settings, spec: BaseModelSpec, port: int) -> list[str]:
    assert spec.hf_dir is not None
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(spec.hf_dir),
        "--served-model-name",
        spec.id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(settings.vllm_max_model_len),
        "--enable-lora",
        "--max-lora-rank",
        str(settings.vllm_max_lora_rank),
        "--max-loras",
        str(settings.vllm_max_loras),
        "--max-cpu-loras",
        str(settings.vllm_max_cpu_loras),
        "--disable-uvicorn-access-log",
    ]
    # The template its adapters were trained with, and the tool-call parser that reads it.
    argv += vllm_template_args(settings, spec)
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    if settings.vllm_gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(settings.vllm_gpu_memory_utilization)]
    return argv + list(settings.vllm_extra_args)


# Holds a sitecustomize.py that, in every engine process, arms the parent-death
# signal and fixes a LoRA bug of vLLM's CPU kernels (see that file).
_SITE_DIR = Path(__file__).with_name("vllm_site")


def vllm_env(settings: Settings, placement: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SITE_DIR), env.get("PYTHONPATH")) if p)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.vllm_kvcache_gib))
    # Never reach for a model hub: every weight is local.
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    env["DO_NOT_TRACK"] = "1"
    env.update(placement or {})
    return env


def adapter_path_mapper(settings: Settings):  # type: ignore[no-untyped-def]
    """How an external replica names an adapter folder: under --vllm-remote-adapters-dir."""
    if not settings.vllm_remote_adapters_dir:
        return same_path
    remote_root = PurePosixPath(settings.vllm_remote_adapters_dir)
    local_root = settings.adapters_dir

    def on_replica(path: Path) -> str:
        try:
            return str(remote_root / path.relative_to(local_root).as_posix())
        except ValueError:  # outside the adapters folder: only this machine sees it
            return str(path)

    return on_replica


class VllmReplicaSet:
    """Every replica serving one base model on vLLM, and the choice between them."""

    family = FAMILY

    def __init__(
        self,
        settings: Settings,
        spec: BaseModelSpec,
        http: httpx.AsyncClient,
        guard: ProcessGuard,
        policy: RoutingPolicy | None = None,
        health_http: httpx.AsyncClient | None = None,
    ) -> None:
        self.key = f"{FAMILY}/{spec.id}"
        self.model_id = spec.id
        self._settings = settings
        self._http = http
        self._policy = policy or make_policy(settings.routing_policy, settings.routing_load_bound)
        self.replicas: list[VllmReplica] = [
            *self._managed(spec, guard),
            *self._remote(spec),
        ]
        if not self.replicas:
            raise ValueError(
                f"base model {spec.id!r} has no vLLM replica: vllm_replicas is 0 and no "
                "vllm_urls are given"
            )
        self._changed = asyncio.Event()
        # Adapters deleted, by the entry that was deleted: a request that resolved it
        # just before gets 404, one for a later adapter of the same id does not.
        self._deleted: dict[str, ModelEntry] = {}
        for replica in self.replicas:
            replica.on_change = self._notify
        self._health_task: asyncio.Task[None] | None = None
        # Health checks get connections of their own: with every pooled connection busy
        # with requests, a check waiting for one would fail and take a healthy replica out.
        # A new connection each time: a kept-alive one, idle for a check interval, may be
        # closed by the engine in the very instant it is reused.
        self._health_http = health_http or httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=2 * len(self.replicas), max_keepalive_connections=0
            ),
            trust_env=False,
        )

    # --- building -------------------------------------------------------------
    def _managed(self, spec: BaseModelSpec, guard: ProcessGuard) -> list[VllmReplica]:
        settings = self._settings
        count = settings.managed_vllm_replicas(spec)
        placements = replica_placements(
            detect_device(settings.vllm_device),
            count,
            settings.vllm_devices_per_replica,
            settings.vllm_extra_args,
        )
        replicas: list[VllmReplica] = []
        for index, placement in enumerate(placements):
            name = f"{self.key}/{index}"
            suffix = "" if count == 1 else f"-{index}"

            def make_process(
                replica: ManagedReplica, name: str = name, placement=placement, suffix=suffix
            ) -> SupervisedProcess:
                port = free_port()
                process_spec = ProcessSpec(
                    name=name,
                    argv=vllm_argv(settings, spec, port),
                    env=vllm_env(settings, placement),
                    port=port,
                    health_path="/health",
                    startup_timeout_s=settings.vllm_startup_timeout_s,
                    log_path=settings.data_root / "logs" / f"vllm-{spec.id}{suffix}.log",
                    expected_startup_s=_EXPECTED_STARTUP_S,
                )
                return SupervisedProcess(
                    process_spec,
                    self._http,
                    Backoff(settings.restart_backoff_initial_s, settings.restart_backoff_max_s),
                    settings.engine_stop_timeout_s,
                    guard,
                    on_ready=replica.process_ready,
                    on_state=replica.process_state_changed,
                )

            loras = LoraSlots.from_settings(self._http, settings, name)
            replicas.append(ManagedReplica(name, spec.id, loras, make_process))
        return replicas

    def _remote(self, spec: BaseModelSpec) -> list[VllmReplica]:
        settings = self._settings
        key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        mapper = adapter_path_mapper(settings)
        return [
            RemoteReplica(
                f"{self.key}/{url}",
                spec.id,
                Upstream(url, headers),
                LoraSlots.from_settings(self._http, settings, f"{self.key}/{url}", mapper),
            )
            for url in settings.vllm_urls_for(spec)
        ]

    # --- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        for replica in self.replicas:
            await replica.start()
        await self._check_all()
        self._health_task = asyncio.create_task(self._watch(), name=f"health-{self.key}")

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await asyncio.gather(*(r.stop() for r in self.replicas))
        await self._health_http.aclose()

    async def refresh(self) -> bool:
        """One health round now (``/ready`` asks), so its answer is current."""
        await self._check_all()
        return self.ready()

    async def _watch(self) -> None:
        while True:
            recovering = any(r.taken_out_at is not None for r in self.replicas)
            await asyncio.sleep(
                _RECOVERY_CHECK_S if recovering else self._settings.vllm_health_interval_s
            )
            await self._check_all()

    async def _check_all(self) -> None:
        results = await asyncio.gather(
            *(r.check(self._health_http) for r in self.replicas), return_exceptions=True
        )
        for replica, result in zip(self.replicas, results, strict=True):
            if isinstance(result, Exception):
                log.warning("%s: health check failed: %r", replica.name, result)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- requests -------------------------------------------------------------
    async def acquire(self, entry: ModelEntry, avoid: frozenset[str] = frozenset()) -> Lease:
        adapter = entry.id if entry.kind == "adapter" else None
        failures: list[AdapterLoadError] = []
        deadline = time.monotonic() + self._settings.engine_wait_s
        while True:
            replica = await self._choose(entry, adapter, avoid, deadline, failures)
            lease = replica.lease(adapter)  # keeps the adapter loaded until the answer ends
            if adapter is None or entry.weights is None:
                return lease
            try:
                if self._deleted.get(adapter) is entry:  # resolved just before its delete
                    raise ModelNotFoundError(adapter)
                await replica.loras.ensure_loaded(replica.upstream, adapter, entry.weights)
                return lease
            except ReplicaUnreachableError as error:
                lease.done()
                if error.refused:
                    replica.take_out(error.message)
            except AdapterLoadError as error:
                lease.done()
                failures.append(error)
            except BaseException:
                lease.done()
                raise
            avoid = avoid | {replica.name}

    async def _choose(
        self,
        entry: ModelEntry,
        adapter: str | None,
        avoid: frozenset[str],
        deadline: float,
        failures: list[AdapterLoadError],
    ) -> VllmReplica:
        while True:
            candidates = [r for r in self.replicas if r.serving() and r.name not in avoid]
            if candidates:
                by_name = {r.name: r for r in candidates}
                return by_name[self._policy.choose([r.load() for r in candidates], adapter).name]
            if failures:  # every replica that could have served it refused the adapter
                raise AdapterLoadError("; ".join(f.message for f in failures[:3]))
            remaining = deadline - time.monotonic()
            waitable = [r for r in self.replicas if r.name not in avoid and r.may_come_back()]
            if remaining <= 0 or not waitable:
                raise self._unavailable(entry)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _unavailable(self, entry: ModelEntry) -> EngineUnavailableError:
        states = ", ".join(f"{s.name} {s.state.value}" for s in self.statuses())
        retry = min(
            (
                r.process.retry_after_s()
                for r in self.replicas
                if isinstance(r, ManagedReplica) and r.may_come_back()
            ),
            default=5.0,
        )
        return EngineUnavailableError(
            f"No vLLM replica can serve '{entry.id}' now ({states}); retry shortly.",
            retry_after_s=retry,
        )

    def report_unreachable(self, replica: str) -> None:
        for candidate in self.replicas:
            if candidate.name == replica:
                candidate.take_out("a request could not reach it")

    async def unload(self, entry: ModelEntry) -> None:
        """Delete an adapter: no new request may lease it; unload it everywhere once the
        requests in flight on it have ended."""
        self._deleted[entry.id] = entry
        await asyncio.gather(*(r.retire_adapter(entry.id) for r in self.replicas))

    def ready(self) -> bool:
        return any(r.serving() for r in self.replicas)

    @property
    def replica_count(self) -> int:
        return len(self.replicas)

    def statuses(self) -> list[EngineStatus]:
        return [r.status() for r in self.replicas]
