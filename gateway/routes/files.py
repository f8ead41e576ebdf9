"""OpenAI's files routes (``/v1/files``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from gateway.errors import InvalidRequestError
from gateway.finetune.files import USER_PURPOSES, check_purpose
from gateway.routes.deps import runtime_of
from gateway.routes.openapi import FILE, errors, object_schema, request_body

router = APIRouter(tags=["files"])

_UPLOAD_SCHEMA = request_body(
    multipart=object_schema(
        ["file", "purpose"], file=FILE, purpose={"type": "string", "enum": sorted(USER_PURPOSES)}
    )
)
_CONTENT = {
    200: {
        "description": "The file's bytes",
        "content": {"application/octet-stream": {"schema": FILE}},
    }
}


async def read_upload(request: Request, field: str = "file") -> tuple[UploadFile, dict[str, str]]:
    """The uploaded file and the text fields of a multipart request."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequestError("Send the file as multipart/form-data.", param=field)
    form = await request.form()
    upload = form.get(field)
    if not isinstance(upload, UploadFile):
        raise InvalidRequestError(f"Upload the file as the '{field}' field.", param=field)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return upload, fields


@router.post("/v1/files", openapi_extra=_UPLOAD_SCHEMA)
async def create_file(request: Request) -> dict[str, Any]:
    upload, fields = await read_upload(request)
    purpose = check_purpose(fields.get("purpose", ""))
    store = runtime_of(request).fine_tuning.files
    try:
        return await store.create(upload.file, upload.filename or "upload", purpose)
    finally:
        await upload.close()


@router.get("/v1/files", responses=errors(404))  # 404: an unknown ``after``
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = 10000,
    after: str | None = None,
    order: str = "desc",
) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.files.list(purpose, limit, after, order)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> dict[str, Any]:
    return runtime_of(request).fine_tuning.files.get(file_id)


@router.get("/v1/files/{file_id}/content", response_class=FileResponse, responses=_CONTENT)
async def file_content(file_id: str, request: Request) -> FileResponse:
    store = runtime_of(request).fine_tuning.files
    meta = store.get(file_id)
    return FileResponse(
        store.path(file_id), media_type="application/octet-stream", filename=meta["filename"]
    )


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
    return await runtime_of(request).fine_tuning.files.delete(file_id)
