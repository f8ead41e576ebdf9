"""Which adapters one vLLM replica has loaded, loading on first use and evicting the LRU.

vLLM's runtime LoRA API (``/v1/load_lora_adapter``) is called by the gateway
only. Each adapter is loaded under its public id, so requests and answers
need no rewriting. A per-name lock makes concurrent first requests load once.
At most ``capacity`` adapters stay registered (vLLM's ``max_cpu_loras``); the
least recently used is unloaded to make room and reloads on its next request.
After a replica restarts, the warm set is loaded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.engines.base import Upstream
from gateway.errors import AdapterLoadError, ReplicaUnreachableError

log = logging.getLogger(__name__)


def same_path(path: Path) -> str:
    return str(path)


class LoraSlots:
    def __init__(
        self,
        http: httpx.AsyncClient,
        capacity: int,
        replica: str = "vllm",
        path_on_replica: Callable[[Path], str] = same_path,
    ) -> None:
        self._http = http
        self._capacity = capacity
        self._replica = replica
        self._path_on_replica = path_on_replica
        self._loaded: OrderedDict[str, Path] = OrderedDict()  # LRU order, newest last
        self._loading: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._evict_lock = asyncio.Lock()
        self.loads = 0

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def holds(self, name: str) -> bool:
        """Loaded, or being loaded now (so that routing keeps its requests together)."""
        return name in self._loaded or name in self._loading

    def held(self) -> frozenset[str]:
        return frozenset(self._loaded) | frozenset(self._loading)

    async def ensure_loaded(self, upstream: Upstream, name: str, path: Path) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        self._loading.add(name)
        try:
            async with lock:
                if name in self._loaded:
                    return
                async with self._evict_lock:
                    while len(self._loaded) >= self._capacity:
                        oldest, _ = self._loaded.popitem(last=False)
                        await self._unload(upstream, oldest)
                await self._load(upstream, name, path)
                self._loaded[name] = path
        finally:
            self._loading.discard(name)

    async def unload(self, upstream: Upstream, name: str) -> None:
        if self._loaded.pop(name, None) is not None:
            await self._unload(upstream, name)

    def forget(self, name: str) -> None:
        self._loaded.pop(name, None)

    def forget_all(self) -> list[tuple[str, Path]]:
        """The replica restarted and lost every adapter: return what was loaded, oldest first."""
        warm = list(self._loaded.items())
        self._loaded.clear()
        return warm

    async def reload(self, upstream: Upstream, warm: list[tuple[str, Path]]) -> None:
        """Load again what a replica held before it restarted."""
        for name, path in warm:
            try:
                await self.ensure_loaded(upstream, name, path)
            except (AdapterLoadError, ReplicaUnreachableError) as error:
                log.warning("%s: could not reload %s: %s", self._replica, name, error.message)

    async def _load(self, upstream: Upstream, name: str, path: Path) -> None:
        where = self._path_on_replica(path)
        try:
            response = await self._http.post(
                upstream.base_url + "/v1/load_lora_adapter",
                json={"lora_name": name, "lora_path": where},
                headers=upstream.headers,
                timeout=120,
            )
        except httpx.HTTPError as exc:
            raise ReplicaUnreachableError(
                self._replica,
                f"The replica {self._replica} could not be reached to load '{name}'.",
                refused=isinstance(exc, httpx.ConnectError),
            ) from exc
        # vLLM answers 400 when the name is already loaded (by us, before a
        # gateway restart, or before this replica was out of reach): that is
        # the state we want.
        if response.status_code == 200 or "already" in response.text:
            self.loads += 1
            log.info("%s: loaded adapter %s", self._replica, name)
            return
        log.error(
            "%s: loading adapter %s from %s failed: %s %s",
            self._replica,
            name,
            where,
            response.status_code,
            response.text[:500],
        )
        raise AdapterLoadError(
            f"The replica {self._replica} could not load adapter '{name}' from {where}: "
            f"{_engine_message(response)} When replicas run on other machines, the adapters "
            "folder must be visible to them at --vllm-remote-adapters-dir.",
        )

    async def _unload(self, upstream: Upstream, name: str) -> None:
        try:
            await self._http.post(
                upstream.base_url + "/v1/unload_lora_adapter",
                json={"lora_name": name},
                headers=upstream.headers,
                timeout=60,
            )
            log.info("%s: unloaded adapter %s", self._replica, name)
        except httpx.HTTPError:
            log.warning("%s: could not unload %s; it may be restarting", self._replica, name)


def _engine_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
        message = payload.get("error", {}).get("message") or payload.get("message")
    except (ValueError, AttributeError):
        message = None
    text = str(message or response.text or f"status {response.status_code}").strip()
    return text[:300].rstrip(".") + "."
