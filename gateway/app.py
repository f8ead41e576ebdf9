"""``create_app(settings)``: the FastAPI application of one gateway."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.error_handlers import install_error_handlers
from gateway.middleware import ApiKeyMiddleware, BodyLimitMiddleware, DrainMiddleware, DrainState
from gateway.routes import (
    adapters,
    files,
    fine_tunes,
    fine_tuning,
    inference,
    merges,
    operations,
    responses,
    ui,
)
from gateway.routes.lean import LeanInference
from gateway.routes.openapi import install_openapi
from gateway.runtime import GatewayRuntime, build_runtime
from gateway.security import JSON, MULTIPART, SecurityMiddleware, SecurityPolicy
from gateway.settings import Settings

log = logging.getLogger(__name__)

# Routes that take files: they get max_upload_bytes instead of max_request_bytes, plus
# room for the form around the file (boundaries, part headers, small fields), so that a
# file of exactly max_upload_bytes goes through; the file store checks the file itself.
UPLOAD_PATHS = ("/v1/adapters", "/v1/files", "/v1/fine_tunes")
MULTIPART_ALLOWANCE_BYTES = 1 << 20
# The bodies the routes that do not take JSON read (every other route with a body: JSON only).
BODY_TYPES = {
    "/v1/adapters": (JSON, MULTIPART),
    "/v1/files": (MULTIPART,),
    "/v1/fine_tunes": (MULTIPART,),
}


RuntimeFactory = Callable[[Settings], Awaitable[GatewayRuntime]]


def create_app(
    settings: Settings | None = None, runtime_factory: RuntimeFactory = build_runtime
) -> FastAPI:
    """The app; ``runtime_factory`` builds engines and services at start (tests pass fakes)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await runtime_factory(settings)
        try:
            yield
        finally:
            await app.state.runtime.close()

    app = FastAPI(
        title="tunegate",
        summary="OpenAI-compatible gateway to vLLM and llama.cpp, with a LoRA tuner.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.drain = DrainState()
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(responses.router)
    app.include_router(merges.router)
    app.include_router(adapters.router)
    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    app.include_router(fine_tunes.router)
    app.include_router(operations.router)
    app.include_router(ui.router)
    install_openapi(app, runtime_details=[fine_tunes.document_upload_limits])
    # Added first = runs last, after every check below: the forwarded routes' common case.
    app.add_middleware(LeanInference, routes=inference.LEAN_ROUTES)
    # Added last = runs first: the key is checked before the body is read.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        upload_limits={
            path: settings.max_upload_bytes + MULTIPART_ALLOWANCE_BYTES for path in UPLOAD_PATHS
        },
    )
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value())
    # Before the key: a preflight carries none, and a page must learn nothing from a refusal.
    app.add_middleware(SecurityMiddleware, policy=SecurityPolicy(settings, BODY_TYPES))
    # Outermost: while draining, even an unauthenticated caller learns it is 503.
    app.add_middleware(DrainMiddleware, state=app.state.drain)
    return app
