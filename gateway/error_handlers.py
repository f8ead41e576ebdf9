"""Maps every exception that reaches FastAPI to an OpenAI-shaped JSON answer."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import AdapterError
from gateway.errors import TunegateError, error_body, from_adapter_error

log = logging.getLogger(__name__)

# Starlette's own HTTP errors (unknown route, wrong method) in OpenAI's words.
_HTTP_STATUS_TYPES: dict[int, tuple[str, str | None]] = {
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TunegateError, _tunegate_error)
    app.add_exception_handler(AdapterError, _adapter_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


def json_error(error: TunegateError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


async def _tunegate_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TunegateError)
    return json_error(exc)


async def _adapter_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AdapterError)
    return json_error(from_adapter_error(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param, code = describe_validation_errors(exc.errors())
    return JSONResponse(error_body(message, "invalid_request_error", param, code), status_code=400)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type, code = _HTTP_STATUS_TYPES.get(exc.status_code, ("invalid_request_error", None))
    if exc.status_code >= 500:
        error_type = "server_error"
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    headers = getattr(exc, "headers", None)
    return JSONResponse(
        error_body(message, error_type, None, code), status_code=exc.status_code, headers=headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("The server had an error while processing your request.", "server_error"),
        status_code=500,
    )


def describe_validation_errors(errors: Any) -> tuple[str, str | None, str]:
    """The first validation problem as (message, param, code), in OpenAI's terms."""
    if not errors:
        return "Invalid request.", None, "invalid_value"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request.", None, "invalid_json"
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = _param_path(loc)
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    if not loc:
        return f"Invalid request body: {first.get('msg', 'invalid value')}.", None, "invalid_value"
    return (
        f"Invalid value for '{param}': {first.get('msg', 'invalid value')}.",
        param,
        "invalid_value",
    )


# Pydantic names the member of a union that failed inside ``loc``: not a parameter.
_UNION_MEMBER_TAGS = frozenset({"int", "float", "str", "bool", "list", "dict", "none"})


def _param_path(loc: list[Any]) -> str | None:
    """OpenAI spells nested params as ``messages.[0].role``."""
    parts = [
        f"[{p}]" if isinstance(p, int) else str(p)
        for p in loc
        if isinstance(p, int) or not _is_union_member_tag(str(p))
    ]
    return ".".join(parts) or None


def _is_union_member_tag(part: str) -> bool:
    return part in _UNION_MEMBER_TAGS or "[" in part or part.startswith("constrained-")
