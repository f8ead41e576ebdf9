"""Operational routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from gateway.routes.deps import runtime_of

router = APIRouter(tags=["operations"])


class Readiness(BaseModel):
    status: str
    engines: list[dict[str, Any]]


_READY = {
    200: {"model": Readiness, "description": "Every engine answers"},
    503: {
        "description": "An engine is not up (the engines say which), or the gateway is "
        "shutting down (an error)",
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/Readiness"},
                        {"$ref": "#/components/schemas/ErrorResponse"},
                    ]
                }
            }
        },
    },
}
_METRICS = {200: {"description": "Prometheus text format", "content": {"text/plain": {}}}}


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive: the gateway process answers. Engines may still be starting."""
    return {"status": "ok"}


@router.get("/ready", responses=_READY)
async def ready(request: Request) -> JSONResponse:
    """Ready: every engine answers. 503 while one is starting, restarting or down."""
    runtime = runtime_of(request)
    is_ready = await runtime.refresh_readiness() and not request.app.state.drain.draining
    body = {
        "status": "ready" if is_ready else "unavailable",
        "engines": [s.to_dict() for s in runtime.engine_statuses()],
    }
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses=_METRICS)
async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    await runtime.refresh_readiness()
    await runtime.refresh_engine_metrics()
    return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)
