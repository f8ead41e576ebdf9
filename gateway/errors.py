"""The one exception tree of tunegate, and its mapping to OpenAI-shaped errors.

    TunegateError                      500 server_error
    ├── InvalidRequestError            400 invalid_request_error
    │   └── InvalidJSONError           400 invalid_request_error / invalid_json
    ├── AuthenticationError            401 authentication_error / invalid_api_key
    ├── PermissionDeniedError          403 invalid_request_error: a foreign Host or Origin
    ├── NotFoundError                  404 invalid_request_error
    │   └── ModelNotFoundError         404 invalid_request_error / model_not_found
    ├── ConflictError                  409 invalid_request_error / conflict
    ├── PayloadTooLargeError           413 invalid_request_error / payload_too_large
    ├── AdapterLoadError               500 server_error / adapter_load_failed
    ├── RateLimitError                 429 rate_limit_error (+ Retry-After)
    └── ServiceUnavailableError        503 service_unavailable (+ Retry-After)
        └── EngineUnavailableError     503 engine_unavailable (+ Retry-After)
            └── ReplicaUnreachableError  503 engine_unavailable: one replica, tried elsewhere first

The adapter registry's own errors (``adapters.errors``: invalid, not found,
exists) become 400, 404 and 409 through ``from_adapter_error``.

Every error leaves the gateway as ``{"error": {"message", "type", "param", "code"}}``
with the status the ``openai`` SDK maps to its exception classes. Messages are
written for users: they never carry a traceback or a file path.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from adapters.errors import AdapterError

log = logging.getLogger(__name__)


class TunegateError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class InvalidRequestError(TunegateError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidJSONError(InvalidRequestError):
    default_code = "invalid_json"


class AuthenticationError(TunegateError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(TunegateError):
    """Refused whoever asks: a Host or an Origin this gateway does not serve."""

    status_code = 403
    error_type = "invalid_request_error"
    default_code = "forbidden"


class NotFoundError(TunegateError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, model: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"The model '{model}' does not exist. GET /v1/models lists the models served here.",
            param="model",
        )


class ConflictError(TunegateError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLargeError(TunegateError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class AdapterLoadError(TunegateError):
    """A replica refused to load an adapter (its folder is missing there, say)."""

    default_code = "adapter_load_failed"


class RateLimitError(TunegateError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailableError(TunegateError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class EngineUnavailableError(ServiceUnavailableError):
    default_code = "engine_unavailable"


class ReplicaUnreachableError(EngineUnavailableError):
    """One replica could not be reached; the request may go to another."""

    def __init__(self, replica: str, message: str, refused: bool = True) -> None:
        super().__init__(message, retry_after_s=5)
        self.replica = replica
        self.refused = refused  # the connection was refused, not dropped


# Status codes an engine may answer with, mapped to the class whose type the
# gateway reports. 422 (a FastAPI validation error in an engine) is a bad
# parameter from the user's point of view, so it becomes 400.
_UPSTREAM_STATUS_TABLE: dict[int, type[TunegateError]] = {
    400: InvalidRequestError,
    401: TunegateError,  # the gateway's own credentials to an engine failed: our fault
    403: TunegateError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    501: InvalidRequestError,  # llama-server: a feature this model or engine lacks
    503: EngineUnavailableError,
}


# The adapter registry's kinds of error (it does not import the gateway) as the gateway's.
_ADAPTER_ERROR_KINDS: dict[str, type[TunegateError]] = {
    "invalid": InvalidRequestError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
}


def from_adapter_error(error: AdapterError) -> TunegateError:
    """An error of the adapter registry as the gateway reports it (same message and code)."""
    error_cls = _ADAPTER_ERROR_KINDS.get(error.kind, TunegateError)
    return error_cls(error.message, param=error.param, code=error.code)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _context_overflow(error: dict[str, Any]) -> tuple[str, str | None, str | None]:
    n_ctx, n_prompt = error.get("n_ctx"), error.get("n_prompt_tokens")
    if isinstance(n_ctx, int) and isinstance(n_prompt, int):
        told = f"This model's maximum context length is {n_ctx} tokens, but the request has "
        told += f"{n_prompt} tokens."
    else:
        told = "The request does not fit in this model's context."
    return f"{told} Shorten the messages or the prompt.", None, "context_length_exceeded"


# Engine error types that get OpenAI's code and a message of their own (llama-server's
# "exceed_context_size_error" says "try increasing it", which only an operator can do).
_UPSTREAM_ERROR_TYPES = {"exceed_context_size_error": _context_overflow}


def error_from_upstream(status: int, body: bytes) -> TunegateError:
    """Turn an engine's error answer into the gateway's error, keeping its message.

    vLLM and llama-server answer ``{"error": {...}}`` (with the HTTP status as
    the code); FastAPI-based servers answer ``{"detail": ...}``. All end up as
    one shape.
    """
    error_cls = _UPSTREAM_STATUS_TABLE.get(status, TunegateError)
    message, param, code = _upstream_fields(body)
    if error_cls is TunegateError:
        log.warning("engine answered %s: %s", status, message)
        message = "The engine failed to answer the request."
    return error_cls(message, param=param, code=code)


def _upstream_fields(body: bytes) -> tuple[str, str | None, str | None]:
    try:
        payload = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or "The engine rejected the request."), None, None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        special = _UPSTREAM_ERROR_TYPES.get(str(err.get("type")))
        if special is not None:
            return special(err)
        param = err.get("param")
        code = err.get("code")
        # vLLM repeats the HTTP status as the code; OpenAI's codes are words.
        code_text = str(code) if code is not None and not str(code).isdigit() else None
        return (
            str(err.get("message") or "The engine rejected the request."),
            param if isinstance(param, str) else None,
            code_text,
        )
    if isinstance(payload, dict) and "detail" in payload:
        return _describe_detail(payload["detail"])
    return "The engine rejected the request.", None, None


def _describe_detail(detail: Any) -> tuple[str, str | None, str | None]:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        param = ".".join(loc) or None
        return f"{first.get('msg', 'invalid value')} ({param})", param, "invalid_value"
    return str(detail)[:500], None, None
