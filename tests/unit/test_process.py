"""Engine process supervision, on a stand-in server process (python -m http.server)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import psutil

from gateway.engines.base import EngineState
from gateway.engines.process import Backoff, ProcessSpec, SupervisedProcess, free_port
from gateway.process_guard import ProcessGuard


def _spec(tmp_path, port: int) -> ProcessSpec:
    return ProcessSpec(
        name="stand-in",
        argv=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        env=dict(os.environ),
        port=port,
        health_path="/",
        startup_timeout_s=20,
        log_path=tmp_path / "stand-in.log",
    )


async def _wait_state(
    process: SupervisedProcess, state: EngineState, timeout_s: float = 20
) -> None:
    async with asyncio.timeout(timeout_s):
        while process.state is not state:
            await asyncio.sleep(0.05)


async def test_start_restart_after_kill_and_stop(tmp_path):
    ready_calls = 0

    async def on_ready() -> None:
        nonlocal ready_calls
        ready_calls += 1

    async with httpx.AsyncClient() as http:
        supervised = SupervisedProcess(
            _spec(tmp_path, free_port()),
            http,
            Backoff(0.1, 0.2),
            stop_timeout_s=5,
            guard=ProcessGuard(tmp_path),
            on_ready=on_ready,
        )
        supervised.start()
        assert await supervised.wait_ready(20)
        first_pid = supervised.pid
        assert ready_calls == 1

        os.kill(first_pid, signal.SIGKILL)
        await _wait_state(supervised, EngineState.RESTARTING)
        assert supervised.retry_after_s() >= 1
        await _wait_state(supervised, EngineState.READY)
        assert supervised.pid != first_pid
        assert supervised.restarts == 1
        assert ready_calls == 2  # hooks (adapter replays) run after every restart

        last_pid = supervised.pid
        await supervised.stop()
        assert supervised.state is EngineState.STOPPED
        assert not psutil.pid_exists(last_pid) or psutil.Process(last_pid).status() == "zombie"


async def test_a_process_that_cannot_start_is_retried_with_backoff(tmp_path):
    spec = _spec(tmp_path, free_port())
    failing = ProcessSpec(
        **{**spec.__dict__, "argv": [sys.executable, "-c", "raise SystemExit(3)"]}
    )
    async with httpx.AsyncClient() as http:
        supervised = SupervisedProcess(
            failing, http, Backoff(0.05, 0.1), stop_timeout_s=2, guard=ProcessGuard(tmp_path)
        )
        supervised.start()
        async with asyncio.timeout(10):
            while supervised.restarts < 2:
                await asyncio.sleep(0.05)
        assert not supervised.ready()
        assert "status 3" in (supervised.last_error or "")
        await supervised.stop()


def test_backoff_doubles_up_to_the_cap():
    backoff = Backoff(1.0, 5.0)
    assert [backoff.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
