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
import functools
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from gateway.forwarding import EngineReply
from gateway.protocol import OpenAIRequest
from gateway.routes.replies import SSE_HEADERS

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
    """What the route's FastAPI handler does, without FastAPI: forward, then answer. One
    watcher, for the whole request, cancels the work when the client leaves: while the
    engine is asked (which frees the request's place at once), and while a stream is
    relayed (which closes the engine's answer: it stops generating)."""
    runtime: GatewayRuntime = scope["app"].state.runtime
    task = asyncio.current_task()
    assert task is not None
    watch = _ClientWatch(receive, task)
    reply: EngineReply | None = None
    try:
        reply = await runtime.forwarder.forward(path, body, raw)
        if reply.chunks is None:
            watch.stop()  # the answer is whole: nothing is left to stop
            response = Response(reply.body, status_code=reply.status, media_type=reply.media_type)
            await response(scope, receive, send)
        else:
            await _relay(reply, reply.chunks, send)
    except asyncio.CancelledError:
        if not watch.left:
            raise
        task.uncancel()  # the work saw the cancellation and let go of what it held
        if reply is None:
            await Response(status_code=499)(scope, receive, send)  # as FastAPI's handler
    finally:
        watch.stop()
        if reply is not None and reply.abandon is not None:
            await reply.abandon()  # a stream not read to its end lets go of the engine


async def _relay(reply: EngineReply, chunks: AsyncIterator[bytes], send: Send) -> None:
    """The engine's stream as it comes, with the head Starlette's StreamingResponse would
    send, without its task group (which costs a stream more than its chunks do)."""
    await send({"type": "http.response.start", "status": reply.status, "headers": _sse_head(reply)})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@functools.cache
def _sse_head_for(status: int, media_type: str) -> list[tuple[bytes, bytes]]:
    return StreamingResponse(
        iter(()), status_code=status, media_type=media_type, headers=SSE_HEADERS
    ).raw_headers


def _sse_head(reply: EngineReply) -> list[tuple[bytes, bytes]]:
    return list(_sse_head_for(reply.status, reply.media_type))


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


class _ClientWatch:
    """Cancels ``task`` when the client disconnects (``left`` then says so)."""

    def __init__(self, receive: Receive, task: asyncio.Task[None]) -> None:
        self.left = False
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Task[None] | None = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.left = True
        self._task.cancel()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()  # not awaited: it ends at the loop's next turn
            self._watcher = None
