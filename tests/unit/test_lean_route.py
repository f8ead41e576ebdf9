"""The forwarded routes' own ASGI path answers exactly as FastAPI's handler does.

A JSON body that validates is served by the route itself; anything else (a body that does
not validate, another content type) goes to FastAPI's handler. The same request sent both
ways must reach the engine as the same bytes and come back as the same answer.
"""

from __future__ import annotations

import json

import pytest

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
    for name in ("content-type", "content-length", "cache-control", "retry-after"):
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
