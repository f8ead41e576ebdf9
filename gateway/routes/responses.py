"""OpenAI's Responses API: ``POST /v1/responses``, stateless.

Responses are not stored, so the routes that read stored ones answer ``400``
with a message that says so (rather than ``404``, which would suggest that an
id was merely wrong).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.errors import InvalidRequestError
from gateway.responses.protocol import NOT_STORED_MESSAGE, ResponseDocument, ResponsesRequest
from gateway.responses.service import create_response
from gateway.routes.deps import runtime_of
from gateway.routes.disconnect import ClientDisconnected, unless_disconnected
from gateway.routes.openapi import ALWAYS_REFUSED, errors, event_stream
from gateway.routes.replies import to_http_response

router = APIRouter(tags=["inference"])

# A Responses event; an engine that stops mid-answer ends the stream with an error.
_EVENT_DATA = {
    "anyOf": [
        {
            "type": "object",
            "required": ["type", "sequence_number"],
            "properties": {"type": {"type": "string"}, "sequence_number": {"type": "integer"}},
        },
        {"$ref": "#/components/schemas/ErrorResponse"},
    ]
}
_CREATED = {
    200: {
        "model": ResponseDocument,
        "description": "The response; with `stream`, its events",
        "content": event_stream("One Responses API event", data=_EVENT_DATA),
    },
    **errors(404, 409, 429, 500, 503),
}
_REFUSED = {"responses": errors(400), "openapi_extra": {ALWAYS_REFUSED: True}}


@router.post("/v1/responses", responses=_CREATED)
async def create(body: ResponsesRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    raw = await request.body()
    try:
        reply = await unless_disconnected(
            request, create_response(runtime.catalog, runtime.forwarder, body, raw)
        )
    except ClientDisconnected:
        return Response(status_code=499)  # nobody reads it; the work has stopped
    return to_http_response(reply)


@router.get("/v1/responses/{response_id}", **_REFUSED)
async def retrieve(response_id: str) -> dict[str, Any]:
    raise _not_stored()


@router.delete("/v1/responses/{response_id}", **_REFUSED)
async def delete(response_id: str) -> dict[str, Any]:
    raise _not_stored()


@router.post("/v1/responses/{response_id}/cancel", **_REFUSED)
async def cancel(response_id: str) -> dict[str, Any]:
    raise _not_stored()


@router.get("/v1/responses/{response_id}/input_items", **_REFUSED)
async def input_items(response_id: str) -> dict[str, Any]:
    raise _not_stored()


def _not_stored() -> InvalidRequestError:
    return InvalidRequestError(
        NOT_STORED_MESSAGE, param="response_id", code="response_storage_disabled"
    )
