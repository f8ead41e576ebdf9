"""A supervised engine process: start, wait healthy, restart with backoff, stop.

Engines run as their own processes so that a crash in one cannot take the
gateway down. Each is started by the gateway's ``ProcessGuard``: in a new
session (so its whole process group, vLLM's EngineCore included, can be
signalled at once), with a parent-death signal, and recorded under the data
root (so even a SIGKILLed gateway leaves no engine behind; see
``gateway/process_guard.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.engines.base import EngineState
from gateway.process_guard import ProcessGuard

log = logging.getLogger(__name__)

# Once a process has stayed up this long, its next crash starts backoff afresh.
_STABLE_AFTER_S = 60.0


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health_path: str
    startup_timeout_s: float
    log_path: Path
    expected_startup_s: float = 10.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 1.0
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * (2 ** max(0, attempt)))


@dataclass
class _Run:
    process: asyncio.subprocess.Process
    started_at: float = field(default_factory=time.monotonic)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SupervisedProcess:
    """Keeps one engine process alive until ``stop``."""

    def __init__(
        self,
        spec: ProcessSpec,
        http: httpx.AsyncClient,
        backoff: Backoff,
        stop_timeout_s: float,
        guard: ProcessGuard,
        on_ready: Callable[[], Awaitable[None]] | None = None,
        on_state: Callable[[EngineState], None] | None = None,
    ) -> None:
        self.spec = spec
        self._http = http
        self._backoff = backoff
        self._stop_timeout_s = stop_timeout_s
        self._guard = guard
        self._on_ready = on_ready
        self._on_state = on_state
        self._run: _Run | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready_event = asyncio.Event()
        self._stopping = False
        self.state = EngineState.STOPPED
        self.restarts = 0
        self.last_error: str | None = None
        self._state_since = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self._run.process.pid if self._run else None

    def ready(self) -> bool:
        return self.state is EngineState.READY

    def retry_after_s(self) -> float:
        """A guess at when the engine will answer again, for Retry-After."""
        elapsed = time.monotonic() - self._state_since
        return max(1.0, self.spec.expected_startup_s - elapsed)

    def start(self) -> None:
        if self._supervisor is None:
            self._stopping = False
            # Starting from now, not from when the task first runs: a caller may wait on it at once.
            self._set_state(EngineState.STARTING)
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"supervise-{self.spec.name}"
            )

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready_event.wait(), timeout_s)
        return self.ready()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._terminate()
        self._set_state(EngineState.STOPPED)

    # --- supervision loop -----------------------------------------------------
    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            self._set_state(EngineState.STARTING if self.restarts == 0 else EngineState.RESTARTING)
            try:
                await self._launch()
                await self._wait_healthy()
            except _StartFailed as failure:
                self.last_error = str(failure)
                log.error(
                    "%s failed to start: %s (log: %s)", self.spec.name, failure, self.spec.log_path
                )
                await self._terminate()
            else:
                self._set_state(EngineState.READY)
                self._ready_event.set()
                log.info("%s ready on %s (pid %s)", self.spec.name, self.spec.base_url, self.pid)
                if self._on_ready is not None:
                    await self._run_on_ready()
                assert self._run is not None
                returncode = await self._run.process.wait()
                if self._stopping:
                    return
                if time.monotonic() - self._run.started_at > _STABLE_AFTER_S:
                    attempt = 0
                self.last_error = f"exited with status {returncode}"
                log.error("%s exited with status %s; restarting", self.spec.name, returncode)
                await self._terminate()  # reap what is left of its process group
            self._ready_event.clear()
            self.restarts += 1
            self._set_state(EngineState.RESTARTING)
            delay = self._backoff.delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _run_on_ready(self) -> None:
        assert self._on_ready is not None
        try:
            await self._on_ready()
        except Exception:  # a failed replay must not stop supervision
            log.exception("%s: on-ready hook failed", self.spec.name)

    async def _launch(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log_path.open("ab") as log_file:
            process = await self._guard.spawn(
                self.spec.argv,
                env=self.spec.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )
        self._run = _Run(process)
        log.info("%s starting (pid %s): %s", self.spec.name, process.pid, " ".join(self.spec.argv))

    async def _wait_healthy(self) -> None:
        assert self._run is not None
        deadline = time.monotonic() + self.spec.startup_timeout_s
        url = self.spec.base_url + self.spec.health_path
        while time.monotonic() < deadline:
            if self._run.process.returncode is not None:
                raise _StartFailed(
                    f"exited with status {self._run.process.returncode} while starting"
                )
            with contextlib.suppress(httpx.HTTPError):
                response = await self._http.get(url, timeout=2.0)
                if response.status_code == 200:
                    return
            await asyncio.sleep(0.5)
        raise _StartFailed(f"not healthy after {self.spec.startup_timeout_s:.0f}s")

    async def _terminate(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after the timeout."""
        run, self._run = self._run, None
        if run is None:
            return
        pgid = run.process.pid  # leader of its own session
        signal_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(run.process.wait(), self._stop_timeout_s)
        except TimeoutError:
            log.warning(
                "%s did not stop in %.0fs; killing it", self.spec.name, self._stop_timeout_s
            )
        # Children (vLLM's EngineCore) may outlive the leader: kill the group.
        signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await run.process.wait()
        self._guard.forget(pgid)

    def _set_state(self, state: EngineState) -> None:
        if state is not self.state:
            self.state = state
            self._state_since = time.monotonic()
            if self._on_state is not None:
                self._on_state(state)


class _StartFailed(Exception):
    pass


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
