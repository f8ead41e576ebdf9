"""SIGTERM stops the gateway cleanly and leaves no engine process behind."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.e2e.conftest import BASE_GGUF
from tests.support.gateway_process import start_gateway

pytestmark = pytest.mark.e2e


def test_sigterm_exits_0_and_stops_engines(tmp_path):
    # llama.cpp only: the point is process hygiene, not a second vLLM start-up.
    gateway = start_gateway(tmp_path, "--no-vllm-enabled")
    try:
        gateway.wait_ready(120)
        reply = gateway.client().chat.completions.create(
            model=BASE_GGUF, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.choices[0].message.content is not None
        engine_pids = [e["pid"] for e in gateway.engines()]
        assert engine_pids and all(engine_pids)
        engines = [psutil.Process(pid) for pid in engine_pids]
        descendants = [c for p in engines for c in p.children(recursive=True)]
    finally:
        status = gateway.stop()
    assert status == 0
    _, alive = psutil.wait_procs(engines + descendants, timeout=10)
    assert not alive, f"left running: {alive}"


def test_engines_die_with_a_killed_gateway(tmp_path):
    gateway = start_gateway(tmp_path, "--no-vllm-enabled")
    try:
        gateway.wait_ready(120)
        engines = [psutil.Process(e["pid"]) for e in gateway.engines()]
        assert {p.pid for p in engines} <= {p.pid for p in gateway.tree()}
        gateway.kill()  # SIGKILL: no chance to clean up; nothing of its tree may survive
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()


def test_sigterm_drains_in_flight_streams_then_exits_0(tmp_path):
    gateway = start_gateway(tmp_path, "--no-vllm-enabled", "--drain-timeout-s", "30")
    try:
        gateway.wait_ready(120)
        client = gateway.client()
        story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
        stream = iter(
            client.chat.completions.create(
                model=BASE_GGUF, messages=story, max_tokens=200, temperature=0, stream=True
            )
        )
        next(stream)
        engines = [psutil.Process(e["pid"]) for e in gateway.engines()]
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with gateway.http() as http:
            assert http.get("/ready").status_code == 503
            refused = http.post(
                "/v1/chat/completions", json={"model": BASE_GGUF, "messages": story}
            )
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert http.get("/health").status_code == 200
        rest = list(stream)  # the stream in progress runs to its end
        assert rest and rest[-1].choices[0].finish_reason in ("length", "stop")
        assert gateway.process.wait(timeout=60) == 0
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
    _, alive = psutil.wait_procs(engines, timeout=10)
    assert not alive
