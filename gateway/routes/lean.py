"""The forwarded inference routes, served as plain ASGI on their common path.

FastAPI's request machinery (a ``Request``, the body parsed by ``json.loads``
and validated again from Python objects, dependency solving, the endpoint run
under a response wrapper) costs more CPU than everything else a forwarded
request does. A ``LeanRoute`` is still an ``APIRoute`` (routing, the OpenAPI
document and the schema come from it as before), but it serves a POST itself
(``handle``): it validates the body bytes once, in pydantic's Rust parser,
against the same request model, and forwards those bytes as they came.

Whatever is not the common case goes to FastAPI's own handler, with the body
replayed: a body that does not validate (so that every error reads exactly as
before), a content type other than JSON, an empty body. Errors raised while
forwarding go through the app's exception handlers either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.protocol import OpenAIRequest
from gateway.routes.replies import to_http_response

if TYPE_CHECKING:
    from gateway.runtime import GatewayRuntime


def lean_route(body_model: type[OpenAIRequest]) -> type[APIRoute]:
    """An ``APIRoute`` class that serves its POSTs itself, validating them with
    ``body_model``; its FastAPI handler (``super().handle``) takes what it does not."""

    class LeanRoute(APIRoute):
        _validate = staticmethod(body_model.model_validate_json)

        async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["method"] != "POST":  # 405, as FastAPI words it
                await super().handle(scope, receive, send)
                return
            raw = await _read_body(receive)
            body = _parsed(self._validate, scope, raw)
            if body is None:
                await super().handle(scope, _replaying(raw, receive), send)
                return
            await forward(self.path, body, raw, scope, receive, send)

    return LeanRoute


async def forward(
    path: str, body: OpenAIRequest, raw: bytes, scope: Scope, receive: Receive, send: Send
) -> None:
    """What the route's FastAPI handler does, without FastAPI: forward, then answer."""
    runtime: GatewayRuntime = scope["app"].state.runtime
    reply = await _unless_disconnected(receive, runtime.forwarder.forward(path, body, raw))
    if reply is None:
        response: Response = Response(status_code=499)  # nobody reads it; the work stopped
    else:
        response = to_http_response(reply)
    await response(scope, receive, send)


def _parsed(
    validate: Callable[[bytes], OpenAIRequest], scope: Scope, raw: bytes
) -> OpenAIRequest | None:
    """The request, when it is JSON that validates; None for anything else."""
    if not raw or not _is_json(scope):
        return None
    try:
        return validate(raw)
    except ValidationError:
        return None


def _is_json(scope: Scope) -> bool:
    """No content type, or ``application/json`` (with parameters): FastAPI reads the
    body as JSON then. Other ``+json`` types are rare; FastAPI's handler takes them."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json"
    return True


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the common case: one message
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def _replaying(raw: bytes, receive: Receive) -> Receive:
    """``receive`` that gives the body already read once, then the connection's events."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


T = TypeVar("T")


async def _unless_disconnected(receive: Receive, work: Awaitable[T]) -> T | None:
    """Run ``work`` in this task; should the client leave first, cancel it and return
    None (``routes/disconnect.py`` does the same for a ``Request``, with a task more)."""
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise
        task.uncancel()
        return None  # ``work`` has let go of what it held: it saw the cancellation
    finally:
        watcher.cancel()  # not awaited: it ends at the loop's next turn, at no cost here
