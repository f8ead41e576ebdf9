"""``/v1/fine_tunes``: upload and create a fine-tuning job in one call, for curl.

    curl -F file=@data.jsonl -F model=smollm2-135m-instruct -F suffix=jsonbot \\
         [-F n_epochs=3] [-F batch_size=4] [-F learning_rate_multiplier=1] [-F seed=0] \\
         [-F method=dpo [-F beta=0.1] [-F sft_loss_weight=1]] \\
         http://127.0.0.1:8000/v1/fine_tunes
    curl http://127.0.0.1:8000/v1/fine_tunes/ftjob-...
    curl -N "http://127.0.0.1:8000/v1/fine_tunes/ftjob-.../events?stream=true"
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from gateway.error_handlers import describe_validation_errors
from gateway.errors import InvalidRequestError
from gateway.finetune.jobs_store import TERMINAL
from gateway.finetune.protocol import CreateJobRequest
from gateway.routes.deps import runtime_of
from gateway.routes.files import read_upload
from gateway.routes.openapi import (
    FILE,
    auto_or,
    errors,
    event_stream,
    multipart_schema,
    object_schema,
    request_body,
)
from gateway.runtime import GatewayRuntime

router = APIRouter(tags=["fine-tuning"])

_HYPERPARAMETER_FIELDS = (
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "lora_rank",
    "lora_alpha",
)
_DPO_FIELDS = ("beta", "sft_loss_weight")
_POLL_S = 0.5
_FILE_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
_UPLOAD_SCHEMA = request_body(
    multipart=object_schema(
        ["file", "model"],
        file=FILE,
        model={
            "anyOf": [
                {"type": "string", "description": "A base model with an HF checkpoint"},
                {
                    "type": "string",
                    "pattern": "^ft:",
                    "description": "An adapter of this gateway (id or alias); the job continues it",
                },
            ]
        },
        # Lowercased, other characters become '-': it needs one letter or digit.
        suffix={"type": "string", "maxLength": 64, "pattern": "[A-Za-z0-9]"},
        validation_file=_FILE_ID,
        seed={"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        method={"type": "string", "enum": ["supervised", "dpo"], "default": "supervised"},
        n_epochs=auto_or({"type": "integer", "minimum": 1, "maximum": 50}),
        batch_size=auto_or({"type": "integer", "minimum": 1, "maximum": 256}),
        learning_rate_multiplier=auto_or({"type": "number", "exclusiveMinimum": 0, "maximum": 10}),
        lora_rank=auto_or({"type": "integer", "minimum": 1, "maximum": 256}),
        lora_alpha=auto_or({"type": "integer", "minimum": 1, "maximum": 1024}),
        # DPO only (method=dpo); ignored otherwise.
        beta=auto_or({"type": "number", "exclusiveMinimum": 0, "maximum": 10}),
        sft_loss_weight=auto_or({"type": "number", "minimum": 0, "maximum": 10}),
    )
)
_EVENTS = {
    200: {
        "description": "The job's events; with `stream`, as server-sent events",
        "content": event_stream("A job event; a last `job` event; then [DONE]"),
    }
}


def document_upload_limits(document: dict[str, Any], runtime: GatewayRuntime) -> None:
    """What this gateway's settings allow: its trainable bases, its highest LoRA rank."""
    fields = multipart_schema(document, "/v1/fine_tunes", "post")["properties"]
    fields["model"]["anyOf"][0]["enum"] = runtime.fine_tuning.trainable_bases()
    fields["lora_rank"]["anyOf"][0]["maximum"] = runtime.settings.vllm_max_lora_rank


@router.post("/v1/fine_tunes", openapi_extra=_UPLOAD_SCHEMA, responses=errors(404))
async def create_fine_tune(request: Request) -> dict[str, Any]:
    service = runtime_of(request).fine_tuning
    upload, fields = await read_upload(request)
    method = fields.get("method") or "supervised"
    names = _HYPERPARAMETER_FIELDS + (_DPO_FIELDS if method == "dpo" else ())
    hyperparameters = {k: _number_or_auto(fields[k]) for k in names if k in fields}
    try:
        job_request = CreateJobRequest.model_validate(
            {
                "model": fields.get("model"),
                "training_file": "pending",
                "validation_file": fields.get("validation_file") or None,
                "suffix": fields.get("suffix") or None,
                "seed": fields.get("seed") or None,
                "method": {"type": method, method: {"hyperparameters": hyperparameters}},
            }
        )
    except ValidationError as exc:
        message, param, code = describe_validation_errors(exc.errors())
        raise InvalidRequestError(message, param=param, code=code) from None
    try:
        stored = await service.files.create(
            upload.file, upload.filename or "data.jsonl", "fine-tune"
        )
    finally:
        await upload.close()
    return service.create(job_request.model_copy(update={"training_file": stored["id"]}))


@router.get("/v1/fine_tunes/{job_id}")
async def retrieve_fine_tune(job_id: str, request: Request) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.get(job_id)


@router.get("/v1/fine_tunes/{job_id}/events", response_model=None, responses=_EVENTS)
async def fine_tune_events(
    job_id: str, request: Request, stream: bool = False
) -> dict[str, Any] | StreamingResponse:
    """Events oldest first; with ``stream=true``, as SSE until the job ends."""
    store = runtime_of(request).fine_tuning.store
    store.get(job_id)
    if not stream:
        return {"object": "list", "data": [e for _, e in store.events_since(job_id, 0)]}
    return StreamingResponse(
        _follow(request, job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _follow(request: Request, job_id: str) -> AsyncIterator[bytes]:
    store = runtime_of(request).fine_tuning.store
    seen = 0
    while True:
        for seq, event in store.events_since(job_id, seen):
            seen = seq
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        job = store.get(job_id)
        if job["status"] in TERMINAL:
            final = {k: job[k] for k in ("id", "status", "fine_tuned_model", "error")}
            yield b"event: job\ndata: " + json.dumps(final).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(_POLL_S)


def _number_or_auto(value: str) -> Any:
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        return value  # validation says what is wrong
    return int(number) if number.is_integer() else number
