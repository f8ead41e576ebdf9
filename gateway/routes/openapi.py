"""OpenAPI request bodies for routes that read their body themselves (uploads, JSON or form)."""

from __future__ import annotations

from typing import Any

FILE = {"type": "string", "format": "binary"}
TEXT = {"type": "string"}


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
