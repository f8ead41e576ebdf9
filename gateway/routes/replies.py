"""An engine's reply as the HTTP response the client gets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.forwarding import EngineReply

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class RelayedStream(StreamingResponse):
    """A relayed stream that lets go of its engine request however it ends: read to
    the end, cut off by the client, or never started because the client left first."""

    def __init__(self, reply: EngineReply, abandon: Callable[[], Awaitable[None]] | None) -> None:
        assert reply.chunks is not None
        super().__init__(
            reply.chunks,
            status_code=reply.status,
            media_type=reply.media_type,
            headers=SSE_HEADERS,
        )
        self._abandon = abandon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._abandon is not None:
                await self._abandon()


def to_http_response(reply: EngineReply) -> Response:
    if reply.chunks is not None:
        return RelayedStream(reply, reply.abandon)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
