"""OpenAI inference routes: chat completions, completions, models (Responses: responses.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.protocol import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from gateway.routes.deps import runtime_of
from gateway.routes.openapi import errors, event_stream
from gateway.routes.replies import to_http_response

router = APIRouter(tags=["inference"])

# The engine's answer as it sent it; with ``stream``, its chunks as server-sent events.
_FORWARDED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The engine's answer; with `stream`, its chunks",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            **event_stream("A JSON chunk, or [DONE] at the end"),
        },
    },
    **errors(404, 409, 429, 500, 503),
}


@router.post("/v1/chat/completions", responses=_FORWARDED)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await _forward("/v1/chat/completions", body, request)


@router.post("/v1/completions", responses=_FORWARDED)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    return await _forward("/v1/completions", body, request)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    entries = runtime_of(request).catalog.entries()
    return {"object": "list", "data": [e.to_openai() for e in entries]}


@router.get("/v1/models/{model_id:path}", responses=errors(404))
async def retrieve_model(model_id: str, request: Request) -> dict[str, object]:
    return runtime_of(request).catalog.resolve(model_id).to_openai()


async def _forward(path: str, body: OpenAIRequest, request: Request) -> Response:
    # FastAPI has parsed and validated the body already; the raw bytes it read
    # are cached on the request and go to the engine unchanged.
    raw = await request.body()
    reply = await runtime_of(request).forwarder.forward(path, body, raw)
    return to_http_response(reply)
