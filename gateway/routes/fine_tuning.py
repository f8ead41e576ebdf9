"""OpenAI's fine-tuning routes (``/v1/fine_tuning/jobs``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.finetune.protocol import CreateJobRequest
from gateway.routes.deps import runtime_of
from gateway.routes.openapi import errors

router = APIRouter(tags=["fine-tuning"])


@router.post("/v1/fine_tuning/jobs", responses=errors(404))  # 404: an unknown file or adapter
async def create_job(body: CreateJobRequest, request: Request) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.create(body)


@router.get("/v1/fine_tuning/jobs", responses=errors(404))  # 404: an unknown ``after``
async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict[str, Any]:
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    return runtime_of(request).fine_tuning.store.list(after, limit, metadata or None)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: str, request: Request) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.get(job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    return await runtime_of(request).fine_tuning.cancel(job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
async def pause_job(job_id: str, request: Request) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.pause(job_id)


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def resume_job(job_id: str, request: Request) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.resume(job_id)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def list_events(
    job_id: str, request: Request, after: str | None = None, limit: int = 20
) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.store.events(job_id, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(
    job_id: str, request: Request, after: str | None = None, limit: int = 10
) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.store.checkpoints(job_id, after, limit)
