"""The forwarded inference routes, served as plain ASGI on their common path.

FastAPI's request machinery (a ``Request``, the body parsed by ``json.loads``
and validated again from Python objects, dependency solving, the endpoint run
under a response wrapper) and Starlette's around it (the exception middleware's
``Request`` and wrappers, FastAPI's exit stack, the router trying each route in
turn) cost more CPU than everything else a forwarded request does. So
``LeanInference``, the innermost of the app's middleware, serves a POST to a
forwarded route itself: it validates the body bytes once, in pydantic's Rust
parser, against the route's request model, and forwards those bytes as they came.
The app's own middleware (drain, origin checks, API key, body limit) runs before
it as for any request, and the routes stay FastAPI's (the OpenAPI document and
the schema come from them).

Whatever is not the common case goes on to FastAPI, with the body replayed: a body
that does not validate (so that every error reads exactly as before), a content type
other than JSON, an empty body. An error raised while forwarding is answered by the
app's exception handler for it, as FastAPI's route would have it answered.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.forwarding import EngineReply
from gateway.protocol import OpenAIRequest
from gateway.routes.replies import SSE_HEADERS

if TYPE_CHECKING:
    from gateway.runtime import GatewayRuntime


class LeanInference:
    """Pure ASGI: serves POSTs to ``routes`` (path -> request model) that carry JSON
    which validates; passes everything else on to ``app``."""

    def __init__(self, app: ASGIApp, routes: dict[str, type[OpenAIRequest]]) -> None:
        self.app = app
        self._validators = {path: model.model_validate_json for path, model in routes.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        validate = (
            self._validators.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if validate is None:
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        body = _parsed(validate, scope, raw)
        if body is None:
            await self.app(scope, _replaying(raw, receive), send)
            return
        await forward(scope["path"], body, raw, scope, receive, send)


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
    except Exception as error:
        if reply is not None:
            raise  # the answer has begun: no other can be sent
        watch.stop()
        await _answer_error(error, scope, receive, send)
    finally:
        watch.stop()
        if reply is not None and reply.abandon is not None:
            await reply.abandon()  # a stream not read to its end lets go of the engine


async def _answer_error(error: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """The answer of the app's exception handler for ``error`` (for the closest class it
    has one for, as Starlette's exception middleware looks it up); with none, the error
    goes on up."""
    handlers = scope["app"].exception_handlers
    for kind in type(error).__mro__:
        if kind is Exception:  # Starlette's outermost middleware answers those: a 500
            raise error
        if kind in handlers:
            handler, request = handlers[kind], Request(scope, receive)
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, error)
            else:
                response = await run_in_threadpool(handler, request, error)
            await response(scope, receive, send)
            return
    raise error


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
