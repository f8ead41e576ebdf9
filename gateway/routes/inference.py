"""OpenAI inference routes: chat completions, completions, models (Responses: responses.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.catalog import ModelEntry
from gateway.protocol import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from gateway.routes.deps import runtime_of
from gateway.routes.disconnect import ClientDisconnected, unless_disconnected
from gateway.routes.openapi import errors, event_stream
from gateway.routes.replies import to_http_response
from gateway.runtime import GatewayRuntime

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


async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await _forward("/v1/chat/completions", body, request)


async def create_completion(body: CompletionRequest, request: Request) -> Response:
    return await _forward("/v1/completions", body, request)


# The forwarded routes. Their common case (a JSON body that validates) is served by the
# app's LeanInference middleware, before Starlette's routing; these handlers take the
# rest (a body that does not validate, another content type), so that every answer and
# error is FastAPI's own, and the OpenAPI document describes them as before.
LEAN_ROUTES: dict[str, type[OpenAIRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
for _path, _endpoint in (
    ("/v1/chat/completions", create_chat_completion),
    ("/v1/completions", create_completion),
):
    router.add_api_route(_path, _endpoint, methods=["POST"], responses=_FORWARDED)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    runtime = runtime_of(request)
    data = [_described(runtime, e) for e in runtime.catalog.entries()]
    # OpenAI names mapped to a local model (setting openai_models), parent = that model.
    data += runtime.catalog.openai_names.listed(runtime.catalog)
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}", responses=errors(404))
async def retrieve_model(model_id: str, request: Request) -> dict[str, object]:
    runtime = runtime_of(request)
    named = runtime.catalog.openai_names.described(model_id, runtime.catalog)
    return named or _described(runtime, runtime.catalog.resolve(model_id))


def _described(runtime: GatewayRuntime, entry: ModelEntry) -> dict[str, object]:
    """OpenAI's model object, plus where it is served now (``replicas``)."""
    return {**entry.to_openai(), "replicas": runtime.replicas_of(entry)}


async def _forward(path: str, body: OpenAIRequest, request: Request) -> Response:
    # FastAPI has parsed and validated the body already; the raw bytes it read
    # are cached on the request and go to the engine unchanged.
    raw = await request.body()
    try:
        reply = await unless_disconnected(
            request, runtime_of(request).forwarder.forward(path, body, raw)
        )
    except ClientDisconnected:
        return Response(status_code=499)  # nobody reads it; the work has stopped
    return to_http_response(reply)
