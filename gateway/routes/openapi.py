"""The OpenAPI document, true to what the gateway answers.

Routes declare the errors their service raises (``responses=errors(404, 409)``);
``install_openapi`` adds the ones every route shares, each with the OpenAI
error schema: ``400`` where a parameter or body is checked (FastAPI would
say ``422``, which the gateway never answers), ``413`` where a body is read,
``401`` (a key is set) and ``503`` (shutting down) on every route but
``/health``, ``403`` (a foreign Host or Origin) on every route, ``404`` where
a path names something. Routes that read their body themselves (uploads)
describe it with ``request_body``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

if TYPE_CHECKING:
    from gateway.runtime import GatewayRuntime

# Fills in what this gateway's settings decide (its bases, its limits).
RuntimeDetails = Callable[[dict[str, Any], "GatewayRuntime"], None]

FILE = {"type": "string", "format": "binary"}
TEXT = {"type": "string"}

_REF_TEMPLATE = "#/components/schemas/{model}"
_ERROR_REF = {"$ref": _REF_TEMPLATE.format(model="ErrorResponse")}
# Routes outside the key check and the shutdown drain (gateway.middleware).
_UNGUARDED_PATHS = frozenset({"/health"})
# ``openapi_extra`` of a route that exists only to say why it cannot be served.
ALWAYS_REFUSED = "x-always-refused"

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: bad JSON, a missing or invalid parameter",
    401: "Missing or wrong API key (when the gateway has one)",
    403: "Refused whoever asks: a Host header not in allowed_hosts (DNS rebinding), or a "
    "browser's cross-origin request from an origin not in cors_origins",
    404: "No such model, file, job, adapter or merge",
    409: "Conflict: the name is taken, or the thing is busy or finished",
    413: "Request body larger than the gateway's limit",
    429: "The engine's queue is full; retry after Retry-After seconds",
    500: "The engine failed to answer",
    503: "An engine is starting or restarting, or the gateway is shutting down; "
    "retry after Retry-After seconds",
}


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorObject


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these statuses, each with the OpenAI error schema."""
    return {s: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


def event_stream(description: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``200`` content entry for a route that streams server-sent events.

    Its schema describes one event (OpenAPI 3.1 has no schema of the whole
    stream); ``data``, when given, is the schema of each event's JSON payload."""
    data_schema: dict[str, Any] = {"type": "string", "description": description}
    if data is not None:
        data_schema.update(contentMediaType="application/json", contentSchema=data)
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": data_schema},
    }
    return {"text/event-stream": {"schema": event}}


def request_body(**content_schemas: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route: ``request_body(multipart=object_schema(...), json=...)``."""
    names = {"multipart": "multipart/form-data", "json": "application/json"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                names[kind]: {"schema": schema} for kind, schema in content_schemas.items()
            },
        }
    }


def object_schema(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def auto_or(schema: dict[str, Any]) -> dict[str, Any]:
    """A hyperparameter: a number in range, or ``"auto"``."""
    return {"anyOf": [schema, {"type": "string", "enum": ["auto"]}]}


def multipart_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = document["paths"][path][method]["requestBody"]
    schema: dict[str, Any] = body["content"]["multipart/form-data"]["schema"]
    return schema


def install_openapi(app: FastAPI, runtime_details: Iterable[RuntimeDetails] = ()) -> None:
    """Replace FastAPI's document with one that lists the statuses really answered.

    ``runtime_details`` complete it from the running gateway (built in the
    lifespan, so before the document is first asked for)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            _document_shared_errors(document)
            runtime = getattr(app.state, "runtime", None)
            for fill in runtime_details if runtime is not None else ():
                fill(document, runtime)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_shared_errors(document: dict[str, Any]) -> None:
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            validated = responses.pop("422", None) is not None
            has_body = "requestBody" in operation
            parameters = operation.get("parameters", [])
            shared = {
                400: validated or has_body,
                404: any(p.get("in") == "path" for p in parameters),
                413: has_body,
                401: path not in _UNGUARDED_PATHS,
                403: True,  # the Host and Origin checks (gateway.security) guard every route
                503: path not in _UNGUARDED_PATHS,
            }
            for status, applies in shared.items():
                if applies:
                    responses.setdefault(str(status), _error_response(status))
            if operation.pop(ALWAYS_REFUSED, False):
                responses.pop("200", None)
            operation["responses"] = dict(sorted(responses.items()))
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _, definitions = models_json_schema(
        [(ErrorResponse, "serialization")], ref_template=_REF_TEMPLATE
    )
    schemas.update(definitions.get("$defs", {}))
    document["components"]["schemas"] = dict(sorted(schemas.items()))


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
