"""Merging adapters into GGUF models for llama.cpp, and removing models.

POST   /v1/adapters/{id}/merge   {"quantization": "q8_0" | "f16" | "q4_k_m"}  → a merge
GET    /v1/merges                every merge, newest first
GET    /v1/merges/{merge_id}     one merge: queued, running, succeeded or failed
DELETE /v1/models/{model}        remove a fine-tuned or merged model (as OpenAI's route)
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from adapters.naming import check_lookup_name
from gateway.errors import InvalidRequestError
from gateway.routes.deps import runtime_of
from gateway.routes.openapi import errors, object_schema, request_body
from tuner.export import QUANTIZATIONS

router = APIRouter(tags=["merges"])

_MERGE_BODY = request_body(
    json=object_schema([], quantization={"type": "string", "enum": sorted(QUANTIZATIONS)})
)
_MERGE_BODY["requestBody"]["required"] = False  # no body: q8_0


@router.post(
    "/v1/adapters/{adapter_id:path}/merge", openapi_extra=_MERGE_BODY, responses=errors(409)
)
async def merge_adapter(adapter_id: str, request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidRequestError("The body must be JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json")
    return runtime_of(request).merges.request(
        check_lookup_name(adapter_id), body.get("quantization")
    )


@router.get("/v1/merges")
async def list_merges(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": runtime_of(request).merges.list()}


@router.get("/v1/merges/{merge_id}")
async def retrieve_merge(merge_id: str, request: Request) -> dict[str, Any]:
    return runtime_of(request).merges.get(merge_id)


@router.delete("/v1/models/{model_id:path}")
async def delete_model(model_id: str, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    entry = runtime.catalog.resolve(model_id)
    removers = {"adapter": runtime.adapters.remove, "merged": runtime.merges.remove}
    remove = removers.get(entry.kind)
    if remove is None:
        raise InvalidRequestError(
            "Base models are set in the settings; they cannot be deleted here.", param="model"
        )
    await remove(entry.id)
    return {"id": entry.id, "object": "model", "deleted": True}
