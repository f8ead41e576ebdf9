"""vLLM: one OpenAI-compatible vLLM server per HF base model, or an external one.

The managed server runs ``python -m vllm.entrypoints.openai.api_server`` (the
``vllm`` console script of the CPU build cannot read its own version), bound
to 127.0.0.1, with LoRA enabled and runtime adapter loading allowed. That
loading API is unsafe to expose; only the gateway reaches it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from gateway.catalog import ModelEntry
from gateway.engines.base import EngineState, EngineStatus, Upstream
from gateway.engines.lora_slots import LoraSlots
from gateway.engines.process import Backoff, ProcessSpec, SupervisedProcess, free_port
from gateway.errors import EngineUnavailableError
from gateway.settings import Settings

FAMILY = "vllm"
# vLLM on 2 CPU cores takes about 85 s to start a 135M model.
_EXPECTED_STARTUP_S = 90.0


def vllm_argv(settings: Settings, model_id: str, hf_dir: Path, port: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(hf_dir),
        "--served-model-name",
        model_id,
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
    if settings.vllm_gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(settings.vllm_gpu_memory_utilization)]
    return argv + list(settings.vllm_extra_args)


# Holds a sitecustomize.py that fixes a LoRA bug of vLLM's CPU kernels in every
# engine process (see that file).
_SITE_DIR = Path(__file__).with_name("vllm_site")


def vllm_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SITE_DIR), env.get("PYTHONPATH")) if p)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.vllm_kvcache_gib))
    # Never reach for a model hub: every weight is local.
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    env["DO_NOT_TRACK"] = "1"
    return env


class ManagedVllmEngine:
    """A vLLM server process the gateway runs for one base model."""

    family = FAMILY

    def __init__(
        self, settings: Settings, model_id: str, hf_dir: Path, http: httpx.AsyncClient
    ) -> None:
        self.key = f"{FAMILY}/{model_id}"
        self.model_id = model_id
        port = free_port()
        spec = ProcessSpec(
            name=self.key,
            argv=vllm_argv(settings, model_id, hf_dir, port),
            env=vllm_env(settings),
            port=port,
            health_path="/health",
            startup_timeout_s=settings.vllm_startup_timeout_s,
            log_path=settings.data_root / "logs" / f"vllm-{model_id}.log",
            expected_startup_s=_EXPECTED_STARTUP_S,
        )
        self.process = SupervisedProcess(
            spec,
            http,
            Backoff(settings.restart_backoff_initial_s, settings.restart_backoff_max_s),
            settings.engine_stop_timeout_s,
            on_ready=self._reload_adapters,
        )
        self._upstream = Upstream(spec.base_url)
        self.loras = LoraSlots(http, settings.vllm_max_cpu_loras)

    async def start(self) -> None:
        self.process.start()

    async def stop(self) -> None:
        await self.process.stop()

    async def upstream_for(self, entry: ModelEntry) -> Upstream:
        if not self.process.ready():
            raise EngineUnavailableError(
                f"The vLLM engine for '{entry.id}' is {self.process.state.value}; retry shortly.",
                retry_after_s=self.process.retry_after_s(),
            )
        await _load_if_adapter(self.loras, self._upstream, entry)
        return self._upstream

    async def release(self, entry: ModelEntry) -> None:
        if self.process.ready():
            await self.loras.unload(self._upstream.base_url, self._upstream.headers, entry.id)
        else:
            self.loras.forget(entry.id)

    async def _reload_adapters(self) -> None:
        """A (re)started server has no adapters: load again those that were warm."""
        for name, path in self.loras.forget_all():
            await self.loras.ensure_loaded(
                self._upstream.base_url, self._upstream.headers, name, path
            )

    def ready(self) -> bool:
        return self.process.ready()

    def statuses(self) -> list[EngineStatus]:
        return [
            EngineStatus(
                name=self.key,
                engine=FAMILY,
                state=self.process.state,
                url=self.process.spec.base_url,
                pid=self.process.pid,
                restarts=self.process.restarts,
                models=(self.model_id, *self.loras.loaded()),
                detail=self.process.last_error,
            )
        ]


class ExternalVllmEngine:
    """A vLLM server run elsewhere (a GPU box); the gateway only forwards to it.

    It must serve each base under the base's id (``--served-model-name``).
    Readiness is checked on its ``/health`` route by ``refresh``.
    """

    family = FAMILY
    key = f"{FAMILY}/external"

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        assert settings.vllm_url is not None
        self.base_url = settings.vllm_url.rstrip("/").removesuffix("/v1")
        key = settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None
        self._upstream = Upstream(self.base_url, {"Authorization": f"Bearer {key}"} if key else {})
        self._http = http
        self._healthy = False
        self._detail: str | None = None
        self.loras = LoraSlots(http, settings.vllm_max_cpu_loras)

    async def start(self) -> None:
        await self.refresh()

    async def stop(self) -> None:
        self._healthy = False

    async def refresh(self) -> bool:
        try:
            response = await self._http.get(
                self.base_url + "/health", headers=self._upstream.headers, timeout=5.0
            )
            self._healthy = response.status_code == 200
            self._detail = None if self._healthy else f"/health answered {response.status_code}"
        except httpx.HTTPError as exc:
            self._healthy = False
            self._detail = f"unreachable ({type(exc).__name__})"
        return self._healthy

    async def upstream_for(self, entry: ModelEntry) -> Upstream:
        await _load_if_adapter(self.loras, self._upstream, entry)
        return self._upstream

    async def release(self, entry: ModelEntry) -> None:
        await self.loras.unload(self._upstream.base_url, self._upstream.headers, entry.id)

    def ready(self) -> bool:
        return self._healthy

    def statuses(self) -> list[EngineStatus]:
        state = EngineState.READY if self._healthy else EngineState.STARTING
        return [EngineStatus(self.key, FAMILY, state, url=self.base_url, detail=self._detail)]


async def _load_if_adapter(loras: LoraSlots, upstream: Upstream, entry: ModelEntry) -> None:
    if entry.kind == "adapter" and entry.weights is not None:
        await loras.ensure_loaded(upstream.base_url, upstream.headers, entry.id, entry.weights)
