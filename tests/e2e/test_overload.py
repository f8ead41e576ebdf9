"""A burst far past the admission limits: refusals at once, admitted requests complete,
and the gateway's memory stays bounded."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import psutil
import pytest

from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.suites import fake_upstream
from tests.support.gateway_process import start_gateway

pytestmark = pytest.mark.e2e

LIMIT, QUEUE, BURST = 4, 8, 400


async def _burst(url: str) -> list[tuple[int, float]]:
    body = {"model": EMBEDDED_MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            response = await client.post(url, json=body)
            return response.status_code, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(BURST)))


def test_a_burst_past_the_limits(tmp_path):
    # The engine here answers after 300 ms: an instant stand-in for vLLM, since
    # the point is the gateway's admission, not generation.
    with fake_upstream(latency_ms=300) as upstream:
        gateway = start_gateway(
            tmp_path,
            "--vllm-url",
            upstream,
            "--no-llamacpp-enabled",
            "--engine-max-in-flight",
            str(LIMIT),
            "--engine-max-queue",
            str(QUEUE),
        )
        try:
            gateway.wait_ready(120)
            process = psutil.Process(gateway.process.pid)
            url = gateway.api_url + "/chat/completions"
            asyncio.run(_burst(url))  # warm up: first-use allocations are not growth
            before = process.memory_info().rss
            results = []
            for _ in range(3):
                results += asyncio.run(_burst(url))
            growth = process.memory_info().rss - before
        finally:
            assert gateway.stop() == 0
    refused = [seconds for status, seconds in results if status == 429]
    admitted = [(status, seconds) for status, seconds in results if status != 429]
    assert {status for status, _ in admitted} == {200}
    assert len(admitted) >= LIMIT + QUEUE and len(refused) > BURST  # most of 3 bursts refused
    # Refused at once: faster than any admitted request, which waits 300 ms for the engine.
    assert statistics.median(refused) < min(seconds for _, seconds in admitted)
    assert growth < 50 * 2**20, f"gateway memory grew {growth / 2**20:.0f} MiB"
