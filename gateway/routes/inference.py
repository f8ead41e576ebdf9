"""OpenAI inference routes: chat completions, completions, models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from gateway.forwarding import EngineReply
from gateway.protocol import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from gateway.routes.deps import runtime_of

router = APIRouter(tags=["inference"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await _forward("/v1/chat/completions", body, request)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    return await _forward("/v1/completions", body, request)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    entries = runtime_of(request).catalog.entries()
    return {"object": "list", "data": [e.to_openai() for e in entries]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, object]:
    return runtime_of(request).catalog.resolve(model_id).to_openai()


async def _forward(path: str, body: OpenAIRequest, request: Request) -> Response:
    # FastAPI has parsed and validated the body already; the raw bytes it read
    # are cached on the request and go to the engine unchanged.
    raw = await request.body()
    reply = await runtime_of(request).forwarder.forward(path, body, raw)
    return _to_response(reply)


def _to_response(reply: EngineReply) -> Response:
    if reply.chunks is not None:
        return StreamingResponse(
            reply.chunks,
            status_code=reply.status,
            media_type=reply.media_type,
            headers=_SSE_HEADERS,
        )
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type)
