"""One vLLM server in a base model's replica set: a process the gateway runs, or a URL.

Both kinds count their requests in flight, keep their own adapter slots, and
can be *taken out* of routing when a request could not reach them; they come
back when their health check passes, and then get their adapters back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.engines.base import EngineState, EngineStatus, Lease, Upstream
from gateway.engines.lora_slots import LoraSlots
from gateway.engines.process import SupervisedProcess
from gateway.engines.routing import ReplicaLoad

log = logging.getLogger(__name__)

FAMILY = "vllm"
# A saturated engine may answer its health check late: only this many slow checks in a
# row count as a failure. A refused connection or an error answer counts at once.
_SLOW_CHECKS_TO_FAIL = 3


class VllmReplica:
    """What both kinds share: load, adapters, taking out and rejoining."""

    def __init__(self, name: str, model_id: str, upstream: Upstream, loras: LoraSlots) -> None:
        self.name = name
        self.model_id = model_id
        self.upstream = upstream
        self.loras = loras
        self.in_flight = 0
        self.requests = 0
        self.taken_out_at: float | None = None
        self.on_change: Callable[[], None] = lambda: None
        self._slow_checks = 0

    # --- what routing sees ----------------------------------------------------
    def serving(self) -> bool:
        return self.taken_out_at is None and self._up()

    def may_come_back(self) -> bool:
        """Worth waiting for when nothing serves: it is starting, not lost."""
        raise NotImplementedError

    def load(self) -> ReplicaLoad:
        return ReplicaLoad(self.name, self.in_flight, self.loras.held())

    def lease(self, adapter: str | None = None) -> Lease:
        """One request's place here; with ``adapter``, also a lease that keeps it loaded
        here until the answer ends."""
        self.in_flight += 1
        self.requests += 1
        if adapter is None:
            return Lease(self.name, self.upstream, self._finished)
        release = self.loras.lease(adapter)

        def finished() -> None:
            release()
            self._finished()

        return Lease(self.name, self.upstream, finished)

    def _finished(self) -> None:
        self.in_flight -= 1

    # --- failover -------------------------------------------------------------
    def take_out(self, reason: str) -> None:
        if self.taken_out_at is None:
            log.warning("%s taken out of routing: %s", self.name, reason)
            self.taken_out_at = time.monotonic()
            self.on_change()

    async def rejoin(self) -> None:
        """Its health check passed after it was out: it may have restarted and lost
        its adapters, so load again those it held."""
        if self.taken_out_at is None:
            return
        log.info("%s rejoins", self.name)
        await self.loras.reload(self.upstream, self.loras.forget_all())
        self.taken_out_at = None
        self.on_change()

    async def retire_adapter(self, name: str) -> None:
        """The adapter is being deleted: once its requests here have ended, unload it
        (or, when this replica is down, just do not load it again)."""
        if self.serving():
            await self.loras.retire(self.upstream, name)
        else:
            self.forget_adapter(name)

    def forget_adapter(self, name: str) -> None:
        """The adapter is gone, and this replica is down: do not load it again here."""
        self.loras.forget(name)

    async def healthy(self, http: httpx.AsyncClient) -> bool | None:
        """True when ``/health`` answers 200; False when the replica refuses or answers an
        error; None when it was too slow to tell this time."""
        try:
            response = await http.get(
                self.upstream.base_url + "/health", headers=self.upstream.headers, timeout=5.0
            )
        except httpx.TimeoutException:
            self._slow_checks += 1
            return None if self._slow_checks < _SLOW_CHECKS_TO_FAIL else False
        except httpx.HTTPError:
            return False
        self._slow_checks = 0
        return response.status_code == 200

    # --- per kind -------------------------------------------------------------
    def _up(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def check(self, http: httpx.AsyncClient) -> None:
        """One round of the health check."""
        raise NotImplementedError

    def status(self) -> EngineStatus:
        raise NotImplementedError

    def _status(self, state: EngineState, **fields: object) -> EngineStatus:
        if self.taken_out_at is not None and state is EngineState.READY:
            state = EngineState.UNREACHABLE
        return EngineStatus(
            name=self.name,
            engine=FAMILY,
            state=state,
            url=self.upstream.base_url,
            models=(self.model_id,),
            in_flight=self.in_flight,
            requests=self.requests,
            adapters=tuple(self.loras.loaded()),
            adapter_loads=self.loras.loads,
            **fields,  # type: ignore[arg-type]
        )


class ManagedReplica(VllmReplica):
    """A vLLM process of the gateway's, restarted with backoff when it dies."""

    def __init__(
        self,
        name: str,
        model_id: str,
        loras: LoraSlots,
        make_process: Callable[[ManagedReplica], SupervisedProcess],
    ) -> None:
        self.process = make_process(self)
        super().__init__(name, model_id, Upstream(self.process.spec.base_url), loras)
        # The adapters to load again at its next start, oldest first.
        self._warm: dict[str, Path] = {}
        # From a (re)start until its adapters are loaded again: not yet routed to, and not
        # reported ready, so that "ready" means it holds what it held before.
        self._restoring = True

    def _up(self) -> bool:
        return self.process.ready() and not self._restoring

    def forget_adapter(self, name: str) -> None:
        super().forget_adapter(name)
        self._warm.pop(name, None)

    async def retire_adapter(self, name: str) -> None:
        if self._restoring and self.process.ready():
            # Its process runs and is getting its adapters back: this one is not loaded
            # again, and is unloaded if it already was (or once its load in flight ends).
            self._warm.pop(name, None)
            await self.loras.retire(self.upstream, name)
        else:
            await super().retire_adapter(name)

    def may_come_back(self) -> bool:
        return self.process.state is not EngineState.STOPPED

    def process_state_changed(self, state: EngineState) -> None:
        """Called by the supervisor: a process that stopped lost its adapters."""
        if state in (EngineState.RESTARTING, EngineState.STOPPED):
            # Those it held, and those it was still to get back when it died again.
            self._warm = dict(self.loras.forget_all()) | self._warm
        if state is not EngineState.READY:
            self._restoring = True
        self.on_change()

    async def process_ready(self) -> None:
        """The (re)started process answers: give it back its adapters, then route to it."""
        try:
            for name, path in list(self._warm.items()):
                if name in self._warm:  # not deleted meanwhile
                    await self.loras.reload(self.upstream, [(name, path)])
        finally:
            # Those that did not come back are kept for its next start: its process may
            # have died meanwhile (the supervisor sees that once this returns), or been
            # stopped. A dead one is taken out by the first request refused, which goes to
            # another replica.
            self._warm = {n: p for n, p in self._warm.items() if not self.loras.holds(n)}
            self._restoring = False
            self.taken_out_at = None
            self.on_change()

    async def start(self) -> None:
        self.process.start()

    async def stop(self) -> None:
        await self.process.stop()

    async def check(self, http: httpx.AsyncClient) -> None:
        # Its supervisor watches the process itself; this catches one that lives but
        # does not answer, and brings back one that was taken out but answers again.
        if not self._up():
            return
        verdict = await self.healthy(http)
        if verdict:
            await self.rejoin()
        elif verdict is False:
            self.take_out("its health check failed")

    def status(self) -> EngineStatus:
        state = self.process.state
        if state is EngineState.READY and self._restoring:
            state = EngineState.RESTARTING if self.process.restarts else EngineState.STARTING
        return self._status(
            state,
            pid=self.process.pid,
            restarts=self.process.restarts,
            detail=self.process.last_error,
        )


class RemoteReplica(VllmReplica):
    """A vLLM server run elsewhere (a GPU box), serving the base under its id."""

    def __init__(self, name: str, model_id: str, upstream: Upstream, loras: LoraSlots) -> None:
        super().__init__(name, model_id, upstream, loras)
        self._seen_healthy = False
        self._detail: str | None = None

    def _up(self) -> bool:
        return self._seen_healthy

    def may_come_back(self) -> bool:
        # Not yet seen since the gateway started (both may be starting together).
        return not self._seen_healthy

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._seen_healthy = False

    async def check(self, http: httpx.AsyncClient) -> None:
        verdict = await self.healthy(http)
        if verdict is None:
            return
        if verdict:
            self._detail = None
            if not self._seen_healthy:
                self._seen_healthy = True
                self.on_change()
            await self.rejoin()
        else:
            self._detail = "its /health check failed"
            if self._seen_healthy:
                self.take_out(self._detail)

    def status(self) -> EngineStatus:
        state = EngineState.READY if self._seen_healthy else EngineState.STARTING
        return self._status(state, detail=self._detail)
