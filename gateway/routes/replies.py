"""An engine's reply as the HTTP response the client gets."""

from __future__ import annotations

from fastapi.responses import Response, StreamingResponse

from gateway.forwarding import EngineReply

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def to_http_response(reply: EngineReply) -> Response:
    if reply.chunks is not None:
        return StreamingResponse(
            reply.chunks,
            status_code=reply.status,
            media_type=reply.media_type,
            headers=_SSE_HEADERS,
        )
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
