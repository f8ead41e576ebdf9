"""``create_app(settings)``: the FastAPI application of one gateway."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.error_handlers import install_error_handlers
from gateway.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from gateway.routes import (
    adapters,
    files,
    fine_tunes,
    fine_tuning,
    inference,
    merges,
    operations,
    ui,
)
from gateway.runtime import build_runtime
from gateway.settings import Settings

log = logging.getLogger(__name__)

# Routes that take files: they get max_upload_bytes instead of max_request_bytes.
UPLOAD_PATHS = ("/v1/adapters", "/v1/files", "/v1/fine_tunes")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await build_runtime(settings)
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
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(merges.router)
    app.include_router(adapters.router)
    app.include_router(files.router)
    app.include_router(fine_tuning.router)
    app.include_router(fine_tunes.router)
    app.include_router(operations.router)
    app.include_router(ui.router)
    # Added last = runs first: the key is checked before the body is read.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        upload_limits={path: settings.max_upload_bytes for path in UPLOAD_PATHS},
    )
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value())
    return app
