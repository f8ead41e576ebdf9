"""Admin routes for adapters (OpenAI has none): register, list, read, remove.

POST   /v1/adapters              JSON {"path", "base", "suffix"[, "owner"]} for a
                                 folder under an allowed import folder, or multipart
                                 with files adapter_model + adapter_config and the
                                 same fields
GET    /v1/adapters              every registered adapter
GET    /v1/adapters/{id}         one adapter (id or alias)
DELETE /v1/adapters/{id}         unload from the engine and remove
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile

from adapters.errors import InvalidAdapterError
from adapters.naming import DEFAULT_OWNER, check_lookup_name
from adapters.registry import RegisterRequest
from adapters.validation import CONFIG_FILE, WEIGHTS_FILE
from gateway.error_handlers import describe_validation_errors
from gateway.routes.deps import runtime_of
from gateway.routes.openapi import FILE, TEXT, errors, object_schema, request_body

router = APIRouter(tags=["adapters"])

_UPLOAD_FIELDS = {"adapter_model": WEIGHTS_FILE, "adapter_config": CONFIG_FILE}
_REGISTER_SCHEMA = request_body(
    json={
        **object_schema(["path", "base", "suffix"], path=TEXT, base=TEXT, suffix=TEXT, owner=TEXT),
        "additionalProperties": False,
    },
    multipart=object_schema(
        ["adapter_model", "adapter_config", "base", "suffix"],
        adapter_model=FILE,
        adapter_config=FILE,
        base=TEXT,
        suffix=TEXT,
        owner=TEXT,
    ),
)


class ImportFromPath(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    base: str
    suffix: str
    owner: str = DEFAULT_OWNER


class UploadFields(BaseModel):
    base: str
    suffix: str
    owner: str = DEFAULT_OWNER


# 400 also for adapter files that are not a valid PEFT LoRA for the base: a schema
# cannot say what makes safetensors valid.
@router.post("/v1/adapters", status_code=201, openapi_extra=_REGISTER_SCHEMA, responses=errors(409))
async def register_adapter(request: Request) -> dict[str, Any]:
    service = runtime_of(request).adapters
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        manifest = await _register_upload(request)
    else:
        body = _parse(ImportFromPath, await _json_body(request))
        manifest = await service.register(
            RegisterRequest(
                folder=Path(body.path),
                base=body.base,
                suffix=body.suffix,
                owner=body.owner,
                source={"import": "path"},
            )
        )
    return service.describe(manifest)


@router.get("/v1/adapters")
async def list_adapters(request: Request) -> dict[str, Any]:
    service = runtime_of(request).adapters
    return {"object": "list", "data": [service.describe(m) for m in service.list()]}


@router.get("/v1/adapters/{adapter_id:path}")
async def retrieve_adapter(adapter_id: str, request: Request) -> dict[str, Any]:
    service = runtime_of(request).adapters
    return service.describe(service.get(check_lookup_name(adapter_id)))


@router.delete("/v1/adapters/{adapter_id:path}")
async def delete_adapter(adapter_id: str, request: Request) -> dict[str, Any]:
    manifest = await runtime_of(request).adapters.remove(check_lookup_name(adapter_id))
    return {"id": manifest.id, "object": "adapter", "deleted": True}


async def _register_upload(request: Request) -> Any:
    service = runtime_of(request).adapters
    form = await request.form()
    try:
        fields = _parse(UploadFields, {k: v for k, v in form.items() if isinstance(v, str)})
        folder = service.registry.staging_dir()
        try:
            for field, file_name in _UPLOAD_FIELDS.items():
                upload = form.get(field)
                if not isinstance(upload, UploadFile):
                    raise InvalidAdapterError(f"Upload the file '{field}'.", param=field)
                # An adapter may be a GiB: copied in a thread, not on the event loop.
                await asyncio.to_thread(_save, upload, folder / file_name)
            return await service.register(
                RegisterRequest(
                    folder=folder,
                    base=fields.base,
                    suffix=fields.suffix,
                    owner=fields.owner,
                    source={"import": "upload"},
                )
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)
    finally:
        await form.close()


def _save(upload: UploadFile, target: Path) -> None:
    with target.open("wb") as writer:
        shutil.copyfileobj(upload.file, writer)


async def _json_body(request: Request) -> Any:
    import json

    try:
        return json.loads(await request.body())
    except ValueError:
        raise InvalidAdapterError(
            "Send JSON {path, base, suffix} or a multipart upload.", code="invalid_json"
        ) from None


def _parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param, code = describe_validation_errors(exc.errors())
        raise InvalidAdapterError(message, param=param, code=code) from None
