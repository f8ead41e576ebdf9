"""The parts of the non-streamed path, one at a time, in this process's own CPU time.

A profiler charges its own cost to whatever makes many small calls (httpx, anyio), so
the shares it shows are skewed. Here each part runs alone, N times, and this process's
CPU time (``time.process_time``) is divided by N:

- the upstream client: httpx's pooled client vs the lean client, a POST and its answer
  from the fake instant upstream (a subprocess, whose CPU is not counted);
- the request body: ``json.loads`` and validation from Python objects (FastAPI's way)
  vs validation from the bytes;
- the request metrics: four ``labels()`` look-ups vs children kept per model;
- the app around the forwarder (middleware, routing, the route, the response), with a
  forwarder that answers at once: FastAPI's handler vs the lean route.

    python -m tests.bench.hotpath_parts [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from gateway.app import create_app
from gateway.forwarding import EngineReply
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest
from gateway.routes import lean
from gateway.settings import Settings
from gateway.stream_client import UpstreamClient
from tests.bench.hotpath import CHAT_PATH, _body, upstream
from tests.unit.fakes import FakeUpstream, fake_runtime

BODY = _body(1)


def cpu_us(n: int, once: Callable[[], object]) -> float:
    started = time.process_time()
    for _ in range(n):
        once()
    return (time.process_time() - started) / n * 1e6


async def acpu_us(n: int, once: Callable[[], Awaitable[object]]) -> float:
    for _ in range(min(n, 200)):  # warm
        await once()
    started = time.process_time()
    for _ in range(n):
        await once()
    return (time.process_time() - started) / n * 1e6


async def clients(url: str, n: int) -> dict[str, float]:
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(trust_env=False) as http:

        async def via_httpx() -> None:
            request = http.build_request("POST", url, content=BODY, headers=headers)
            response = await http.send(request, stream=True)
            await response.aread()
            await response.aclose()

        httpx_us = await acpu_us(n, via_httpx)
    pool = UpstreamClient(5, 60)

    async def via_lean() -> None:
        answer = await pool.open(url, BODY, headers)
        await answer.aread()

    lean_us = await acpu_us(n, via_lean)
    pool.close()
    return {"upstream client: httpx": httpx_us, "upstream client: lean": lean_us}


def parsing(n: int) -> dict[str, float]:
    return {
        "body: json.loads + validate (FastAPI)": cpu_us(
            n, lambda: ChatCompletionRequest.model_validate(json.loads(BODY))
        ),
        "body: validate from bytes (lean)": cpu_us(
            n, lambda: ChatCompletionRequest.model_validate_json(BODY)
        ),
    }


def metrics(n: int) -> dict[str, float]:
    m = GatewayMetrics()
    labels = ("model", "vllm")

    def looked_up() -> None:
        m.in_flight.labels(*labels).inc()
        m.in_flight.labels(*labels).dec()
        m.requests.labels(*labels, "200").inc()
        m.latency.labels(*labels).observe(0.001)

    def cached() -> None:
        children = m.of_model(*labels)
        children.in_flight.inc()
        children.in_flight.dec()
        children.answered(200).inc()
        children.latency.observe(0.001)

    return {
        "metrics: labels() each time": cpu_us(n, looked_up),
        "metrics: cached": cpu_us(n, cached),
    }


async def app_stack(n: int) -> dict[str, float]:
    """The ASGI app, called as uvicorn calls it, with a forwarder that answers at once."""
    answer = json.dumps({"id": "x", "choices": []}).encode()
    with TemporaryDirectory() as tmp:
        settings = Settings(data_root=Path(tmp))
        app = create_app(settings, runtime_factory=None)  # type: ignore[arg-type]
        app.state.runtime = fake_runtime(settings, FakeUpstream())

        async def forward(path, request, raw):  # type: ignore[no-untyped-def]
            return EngineReply(200, "application/json", body=answer)

        app.state.runtime.forwarder.forward = forward
        headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ]

        async def one() -> None:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": CHAT_PATH,
                "raw_path": CHAT_PATH.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
            sent = []
            messages = iter([{"type": "http.request", "body": BODY, "more_body": False}])

            async def receive():  # type: ignore[no-untyped-def]
                try:
                    return next(messages)
                except StopIteration:
                    await asyncio.sleep(3600)  # no disconnect

            async def send(message):  # type: ignore[no-untyped-def]
                sent.append(message)

            await app(scope, receive, send)
            assert sent[0]["status"] == 200, sent

        lean_us = await acpu_us(n, one)
        parsed = lean._parsed
        lean._parsed = lambda *args: None  # type: ignore[assignment]
        try:
            fastapi_us = await acpu_us(n, one)
        finally:
            lean._parsed = parsed
    return {"app: FastAPI handler": fastapi_us, "app: lean route": lean_us}


async def main_async(n: int) -> dict[str, float]:
    results: dict[str, float] = {}
    with upstream(0.0) as instant:
        results |= await clients(instant.chat_url, n)
    results |= parsing(n * 10)
    results |= metrics(n * 10)
    results |= await app_stack(n)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.hotpath_parts")
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    try:
        import uvloop

        results = uvloop.run(main_async(args.n))
    except ImportError:
        results = asyncio.run(main_async(args.n))
    for name, value in results.items():
        print(f"{name:<42} {value:8.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
