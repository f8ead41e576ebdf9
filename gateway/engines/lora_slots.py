"""Which adapters one vLLM replica has loaded: leased while in use, loaded on first use,
the least recently used unleased one evicted to make room.

vLLM's runtime LoRA API (``/v1/load_lora_adapter``) is called by the gateway
only. Each adapter is loaded under its public id, so requests and answers
need no rewriting. At most ``capacity`` adapters are registered at once
(vLLM's ``max_cpu_loras``).

The lifecycle, in the order that keeps a registered adapter from ever answering 404:

- **Lease.** A request holds a lease on its adapter from before it is loaded
  until its answer (streamed or not) has ended. Eviction never unloads a leased
  adapter: it takes the least recently used unleased one, or waits (up to
  ``slot_wait_s``) for a lease to end, then answers 503 with Retry-After.
- **Load.** Each cold load is a task of its own: the eviction decision is made
  without awaiting anything, so no lock is held during the HTTP calls, loads of
  different adapters overlap, and concurrent requests for one adapter share its
  one load. A load waits for a pending unload of the same name (else vLLM would
  see "already loaded", then the unload).
- **Retire** (delete). The caller has already taken the adapter off the model
  table; retiring waits (up to ``drain_s``) for its leases and its load to end,
  then unloads it.

After a replica restarts, the warm set is loaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.engines.base import Upstream
from gateway.errors import AdapterLoadError, ReplicaUnreachableError, ServiceUnavailableError
from gateway.settings import Settings

log = logging.getLogger(__name__)

# Retry-After of a request that found every slot leased: about one short answer's time.
_BUSY_RETRY_AFTER_S = 2.0


def same_path(path: Path) -> str:
    return str(path)


class LoraSlots:
    def __init__(
        self,
        http: httpx.AsyncClient,
        capacity: int,
        replica: str = "vllm",
        path_on_replica: Callable[[Path], str] = same_path,
        slot_wait_s: float = 30.0,
        drain_s: float = 60.0,
    ) -> None:
        self._http = http
        self._capacity = capacity
        self._replica = replica
        self._path_on_replica = path_on_replica
        self._slot_wait_s = slot_wait_s
        self._drain_s = drain_s
        self._loaded: OrderedDict[str, Path] = OrderedDict()  # LRU order, newest last
        self._loading: dict[str, asyncio.Task[None]] = {}  # one shared load per name
        self._reserved: set[str] = set()  # loads that own a slot (they count as loaded)
        self._unloading: dict[str, asyncio.Task[None]] = {}
        self._leases: Counter[str] = Counter()
        self._changed = asyncio.Event()  # a lease ended, a slot freed: waiters look again
        self.loads = 0

    @classmethod
    def from_settings(
        cls,
        http: httpx.AsyncClient,
        settings: Settings,
        replica: str,
        path_on_replica: Callable[[Path], str] = same_path,
    ) -> LoraSlots:
        return cls(
            http,
            settings.vllm_max_cpu_loras,
            replica,
            path_on_replica,
            slot_wait_s=settings.vllm_adapter_slot_wait_s,
            drain_s=settings.vllm_adapter_drain_s,
        )

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def holds(self, name: str) -> bool:
        """Loaded, or being loaded now (so that routing keeps its requests together)."""
        return name in self._loaded or name in self._loading

    def held(self) -> frozenset[str]:
        return frozenset(self._loaded) | frozenset(self._loading)

    def leases(self, name: str) -> int:
        return self._leases[name]

    # --- leases -----------------------------------------------------------------
    def lease(self, name: str) -> Callable[[], None]:
        """Keep ``name`` loaded until the returned release is called (more calls do nothing)."""
        self._leases[name] += 1
        open_ = True

        def release() -> None:
            nonlocal open_
            if not open_:
                return
            open_ = False
            self._leases[name] -= 1
            if self._leases[name] <= 0:
                del self._leases[name]
                self._notify()

        return release

    # --- loading ----------------------------------------------------------------
    async def ensure_loaded(self, upstream: Upstream, name: str, path: Path) -> None:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return
        load = self._loading.get(name)
        if load is None:
            load = self._start_load(upstream, name, path)
        # Shielded: a caller that goes away does not cancel the load the others wait on.
        await asyncio.shield(load)

    def _start_load(self, upstream: Upstream, name: str, path: Path) -> asyncio.Task[None]:
        load = asyncio.create_task(
            self._load_into_slot(upstream, name, path), name=f"{self._replica} load {name}"
        )
        self._loading[name] = load

        def finished(task: asyncio.Task[None]) -> None:
            if self._loading.get(name) is task:
                del self._loading[name]
            if not task.cancelled():
                task.exception()  # its callers saw it; nobody else needs to be told
            self._notify()

        load.add_done_callback(finished)
        return load

    async def _load_into_slot(self, upstream: Upstream, name: str, path: Path) -> None:
        evicted = await self._reserve(upstream, name)
        try:
            for pending in (self._unloading.get(evicted or ""), self._unloading.get(name)):
                if pending is not None:
                    await asyncio.shield(pending)
            await self._load(upstream, name, path)
            self._loaded[name] = path
        finally:
            self._reserved.discard(name)
            self._notify()

    async def _reserve(self, upstream: Upstream, name: str) -> str | None:
        """Take a slot for ``name``, evicting the least recently used unleased adapter if
        none is free; returns it. The choice awaits nothing, so no lock is needed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._slot_wait_s
        evicted = None
        while len(self._loaded) + len(self._reserved) >= self._capacity:
            victim = next((n for n in self._loaded if not self._leases[n]), None)
            if victim is not None:
                del self._loaded[victim]
                self._begin_unload(upstream, victim)
                evicted = victim
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ServiceUnavailableError(
                    f"Every adapter slot of {self._replica} ({self._capacity}) is in use by "
                    f"requests in flight, so '{name}' cannot be loaded now; retry shortly, "
                    "or raise vllm_max_cpu_loras.",
                    code="adapter_slots_busy",
                    retry_after_s=_BUSY_RETRY_AFTER_S,
                )
            await self._wait_for_change(remaining)
        self._reserved.add(name)
        return evicted

    # --- unloading --------------------------------------------------------------
    async def retire(self, upstream: Upstream, name: str) -> None:
        """The adapter is being deleted (no new request can lease it): wait for its
        requests in flight and its load, then unload it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_s
        while self._leases[name]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning(
                    "%s: %d requests still use %s after %.0fs; unloading it anyway",
                    self._replica,
                    self._leases[name],
                    name,
                    self._drain_s,
                )
                break
            await self._wait_for_change(remaining)
        load = self._loading.get(name)
        if load is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(load)
        await self.unload(upstream, name)

    async def unload(self, upstream: Upstream, name: str) -> None:
        if self._loaded.pop(name, None) is not None:
            self._begin_unload(upstream, name)
            self._notify()
        pending = self._unloading.get(name)
        if pending is not None:
            await asyncio.shield(pending)

    def _begin_unload(self, upstream: Upstream, name: str) -> None:
        task = asyncio.create_task(self._unload(upstream, name), name=f"{self._replica} unload")
        self._unloading[name] = task

        def finished(done: asyncio.Task[None]) -> None:
            if self._unloading.get(name) is done:
                del self._unloading[name]

        task.add_done_callback(finished)

    def forget(self, name: str) -> None:
        self._loaded.pop(name, None)
        self._notify()

    def forget_all(self) -> list[tuple[str, Path]]:
        """The replica restarted and lost every adapter: return what was loaded, oldest first."""
        warm = list(self._loaded.items())
        self._loaded.clear()
        self._notify()
        return warm

    async def reload(self, upstream: Upstream, warm: list[tuple[str, Path]]) -> None:
        """Load again what a replica held before it restarted."""
        for name, path in warm:
            try:
                await self.ensure_loaded(upstream, name, path)
            except (AdapterLoadError, ServiceUnavailableError) as error:
                log.warning("%s: could not reload %s: %s", self._replica, name, error.message)

    # --- waiting ----------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # --- the engine's API -------------------------------------------------------
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
