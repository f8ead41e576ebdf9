"""A request for a starting engine waits for it; a client that leaves while waiting frees
its place at once (on a real uvicorn server, whose handlers are not cancelled by themselves)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.engines.base import Lease, Upstream
from gateway.engines.process import free_port
from gateway.protocol import ChatCompletionRequest
from gateway.routes.replies import to_http_response
from gateway.settings import Settings
from tests.unit.fakes import FakeUpstream, fake_runtime

CHAT = {"model": "base", "messages": [{"role": "user", "content": "Hi"}]}


class StartingEngine:
    """Stands in for the fake vLLM engine: ready only once ``started`` is set."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.__dict__["_engine"] = engine
        self.__dict__["started"] = asyncio.Event()
        self.__dict__["waiting"] = 0

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self._engine, name)

    async def acquire(self, entry, avoid=frozenset()) -> Lease:  # type: ignore[no-untyped-def]
        self.__dict__["waiting"] += 1
        try:
            await self.started.wait()
        finally:
            self.__dict__["waiting"] -= 1
        return Lease(self._engine.key, Upstream(self._engine.url))


async def _until(condition, timeout_s: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_client_that_leaves_while_waiting_frees_its_place(tmp_path):
    settings = Settings(data_root=tmp_path, engine_max_in_flight=1, engine_max_queue=0)
    app = create_app(settings)
    runtime = fake_runtime(settings, FakeUpstream())
    starting = StartingEngine(runtime.engines["vllm/base"])
    runtime.engines["vllm/base"] = starting  # the forwarder shares this dict
    app.state.runtime = runtime
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with httpx.AsyncClient() as http:
            # The one place is taken by a client that gives up while the engine starts.
            try:
                await http.post(url, json=CHAT, timeout=0.5)
            except httpx.TimeoutException:
                pass
            await _until(lambda: starting.waiting == 0)  # its wait was cancelled
            # The place is free again (not a 429), and this request waits for the engine.
            second = asyncio.create_task(http.post(url, json=CHAT, timeout=10))
            await _until(lambda: starting.waiting == 1)
            assert not second.done()
            starting.started.set()
            answer = await second
            assert answer.status_code == 200, answer.text
    finally:
        starting.started.set()  # nothing left waiting, whatever failed
        server.should_exit = True
        await serving


async def test_a_stream_whose_client_left_before_it_began_lets_go_of_its_engine(tmp_path):
    settings = Settings(data_root=tmp_path, engine_max_in_flight=1, engine_max_queue=0)
    runtime = fake_runtime(settings, FakeUpstream())
    request = ChatCompletionRequest.model_validate({**CHAT, "stream": True})
    raw = json.dumps({**CHAT, "stream": True}).encode()
    reply = await runtime.forwarder.forward("/v1/chat/completions", request, raw)

    async def gone(message: dict) -> None:  # the client closed before the first byte
        raise OSError("connection reset")

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    with pytest.raises(Exception):  # noqa: B017 (Starlette may wrap it; what matters is below)
        await to_http_response(reply)(
            {"type": "http", "asgi": {"spec_version": "2.4"}}, receive, gone
        )
    # The one place is free again: the next request is admitted, not refused with 429.
    again = await runtime.forwarder.forward("/v1/chat/completions", request, raw)
    assert again.chunks is not None
    assert b"".join([c async for c in again.chunks]).endswith(b"[DONE]\n\n")
