"""The forwarded routes' own ASGI path answers exactly as FastAPI's handler does.

A JSON body that validates is served by the route itself; anything else (a body that does
not validate, another content type) goes to FastAPI's handler. The same request sent both
ways must reach the engine as the same bytes and come back as the same answer.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from adapters.errors import AdapterNotFoundError
from gateway.errors import from_adapter_error
from gateway.routes import lean
from tests.unit.fakes import chat_completion

CHAT = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
JSON = {"content-type": "application/json"}


@pytest.fixture
def handled(monkeypatch):  # type: ignore[no-untyped-def]
    """The requests the lean path served; ``handled.off()`` sends the next ones to FastAPI."""

    class Handled(list):
        def off(self) -> None:
            monkeypatch.setattr(lean, "_parsed", lambda *args: None)

    paths = Handled()
    forward = lean.forward

    async def counted(*args):  # type: ignore[no-untyped-def]
        paths.append("lean")
        await forward(*args)

    monkeypatch.setattr(lean, "forward", counted)
    return paths


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True, "top_k": 3}),
        ("/v1/completions", {"model": "base", "prompt": "Once", "max_tokens": 2}),
        ("/v1/chat/completions", {**CHAT, "model": "no-such-model"}),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 10**6}),
    ],
)
async def test_both_paths_give_the_same_answer_and_send_the_same_bytes(
    gateway, upstream, handled, path, body
):
    raw = json.dumps(body, separators=(",", ":")).encode()
    lean_answer = await gateway.post(path, content=raw, headers=JSON)
    assert handled == ["lean"]
    handled.off()
    fastapi_answer = await gateway.post(path, content=raw, headers=JSON)
    assert handled == ["lean"]
    assert lean_answer.status_code == fastapi_answer.status_code
    assert lean_answer.content == fastapi_answer.content
    for name in ("content-type", "content-length", "cache-control", "x-accel-buffering"):
        assert lean_answer.headers.get(name) == fastapi_answer.headers.get(name)
    sent = [request.content for request in upstream.seen]
    assert sent in ([], [raw, raw])


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "base", "messages": [], "temperature": 1}', "messages"),
        (b'{"model": "base", "messages": [{"role": "user"}], "temperature": 5}', "temperature"),
        (b'{"model": "base"', None),
        (b"[1, 2]", None),
    ],
)
async def test_a_body_that_does_not_validate_gets_fastapis_own_error(
    gateway, upstream, handled, raw, param
):
    answer = await gateway.post("/v1/chat/completions", content=raw, headers=JSON)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
    assert handled == []
    assert upstream.seen == []


async def test_a_lean_answer_reads_as_the_engines(gateway, upstream):
    answer = await gateway.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200
    assert answer.json() == chat_completion("base", "Paris")
    assert answer.headers["content-type"] == "application/json"


async def test_other_methods_are_405_as_before(gateway):
    answer = await gateway.get("/v1/chat/completions")
    assert answer.status_code == 405
    assert answer.json()["error"]["code"] == "method_not_allowed"


async def test_a_forwarder_error_gets_the_apps_handler_for_it(gateway, handled, monkeypatch):
    """An error class with a handler (an adapter's) is answered as that handler answers
    it; one without (a bug) goes on to the 500 answer, OpenAI-shaped, with no details."""
    forwarder = gateway.app.state.runtime.forwarder

    async def missing_adapter(*args):  # type: ignore[no-untyped-def]
        raise AdapterNotFoundError("x")

    monkeypatch.setattr(forwarder, "forward", missing_adapter)
    answer = await gateway.post("/v1/chat/completions", json=CHAT)
    assert handled == ["lean"]
    assert answer.status_code == 404
    assert answer.json() == from_adapter_error(AdapterNotFoundError("x")).body()

    async def broken(*args):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug with /secret/path in it")

    monkeypatch.setattr(forwarder, "forward", broken)
    failing = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app, raise_app_exceptions=False),
        base_url="http://localhost",
    )
    async with failing:
        answer = await failing.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "server_error"
    assert "secret" not in answer.text


class EndlessStream(httpx.AsyncByteStream):
    """An engine's stream that sends one event, then nothing until it is closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __aiter__(self):  # type: ignore[override]
        yield b'data: {"choices":[{"delta":{"content":"Pa"}}]}\n\n'
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed.set()


async def test_a_client_that_leaves_mid_stream_stops_the_engine_and_frees_its_place(
    make_gateway, upstream
):
    gateway = make_gateway(engine_max_in_flight=1, engine_max_queue=0)
    endless = EndlessStream()
    upstream.answer = lambda request: httpx.Response(
        200, stream=endless, headers={"content-type": "text/event-stream"}
    )
    raw = json.dumps({**CHAT, "stream": True}).encode()
    first_chunk = asyncio.Event()
    sent: list[dict] = []

    async def receive() -> dict:
        if not sent:
            return {"type": "http.request", "body": raw, "more_body": False}
        await first_chunk.wait()
        return {"type": "http.disconnect"}  # the client leaves after the first event

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await asyncio.wait_for(gateway.app(scope, receive, send), 5)  # type: ignore[attr-defined]
    await asyncio.wait_for(endless.closed.wait(), 5)  # the engine was told to stop
    assert sent[0]["status"] == 200
    upstream.answer = None
    again = await gateway.post("/v1/chat/completions", json=CHAT)
    assert again.status_code == 200  # its place was free: not 429
    metrics = (await gateway.get("/metrics")).text
    assert 'tunegate_requests_in_flight{engine="vllm",model="base"} 0.0' in metrics
