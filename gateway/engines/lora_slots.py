"""Which adapters a vLLM server has loaded, loading on first use and evicting the LRU.

vLLM's runtime LoRA API (``/v1/load_lora_adapter``) is called by the gateway
only. Each adapter is loaded under its public id, so requests and answers
need no rewriting. A per-name lock makes concurrent first requests load once.
At most ``capacity`` adapters stay registered (vLLM's ``max_cpu_loras``); the
least recently used is unloaded to make room and reloads on its next request.
After an engine restart the warm set is loaded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path

import httpx

from gateway.errors import EngineUnavailableError, TunegateError

log = logging.getLogger(__name__)


class LoraSlots:
    def __init__(self, http: httpx.AsyncClient, capacity: int) -> None:
        self._http = http
        self._capacity = capacity
        self._loaded: OrderedDict[str, Path] = OrderedDict()  # LRU order, newest last
        self._locks: dict[str, asyncio.Lock] = {}
        self._evict_lock = asyncio.Lock()
        self.loads = 0

    def loaded(self) -> list[str]:
        return list(self._loaded)

    async def ensure_loaded(
        self, base_url: str, headers: dict[str, str], name: str, path: Path
    ) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._loaded:
                return
            async with self._evict_lock:
                while len(self._loaded) >= self._capacity:
                    oldest, _ = self._loaded.popitem(last=False)
                    await self._unload(base_url, headers, oldest)
            await self._load(base_url, headers, name, path)
            self._loaded[name] = path

    async def unload(self, base_url: str, headers: dict[str, str], name: str) -> None:
        if self._loaded.pop(name, None) is not None:
            await self._unload(base_url, headers, name)

    def forget(self, name: str) -> None:
        self._loaded.pop(name, None)

    def forget_all(self) -> list[tuple[str, Path]]:
        """The engine restarted and lost every adapter: return what was loaded, oldest first."""
        warm = list(self._loaded.items())
        self._loaded.clear()
        return warm

    async def _load(self, base_url: str, headers: dict[str, str], name: str, path: Path) -> None:
        try:
            response = await self._http.post(
                base_url + "/v1/load_lora_adapter",
                json={"lora_name": name, "lora_path": str(path)},
                headers=headers,
                timeout=120,
            )
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(
                f"The engine could not be reached to load '{name}'.", retry_after_s=5
            ) from exc
        # vLLM answers 400 when the name is already loaded (by us, before a
        # gateway restart): that is the state we want.
        if response.status_code == 200 or "already" in response.text:
            self.loads += 1
            log.info("loaded adapter %s", name)
            return
        log.error(
            "loading adapter %s failed: %s %s", name, response.status_code, response.text[:500]
        )
        raise TunegateError(
            f"The engine failed to load adapter '{name}'.", code="adapter_load_failed"
        )

    async def _unload(self, base_url: str, headers: dict[str, str], name: str) -> None:
        try:
            await self._http.post(
                base_url + "/v1/unload_lora_adapter",
                json={"lora_name": name},
                headers=headers,
                timeout=60,
            )
            log.info("unloaded adapter %s", name)
        except httpx.HTTPError:
            log.warning("could not unload adapter %s; the engine may be restarting", name)
