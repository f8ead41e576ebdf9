"""Pure ASGI middleware (no per-request task or body copy): API key and body size.

Both run before routing, so an unknown route without a key is 401 too, and an
oversized body is refused before it is read.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    AuthenticationError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TunegateError,
)

# /ui is a static page without data; its script sends the key with every API call.
PUBLIC_PATHS = frozenset({"/health", "/ui"})


async def send_error(send: Send, error: TunegateError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """Every route but /health needs ``Authorization: Bearer <key>`` when a key is set."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(supplied, self._expected):
            message = (
                "Missing API key: send 'Authorization: Bearer <key>'."
                if not supplied
                else "Incorrect API key provided."
            )
            await send_error(send, AuthenticationError(message))
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with 413, by header or while streaming in.

    ``upload_limits`` maps path prefixes (upload routes) to their own, larger limit.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, upload_limits: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_limits = tuple((upload_limits or {}).items())

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.upload_limits:
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, _too_large(limit))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body is larger than {limit} bytes.")


class DrainState:
    """Requests in progress, and whether the gateway is draining for shutdown."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False


class DrainMiddleware:
    """Counts requests in progress; once draining, new ones get 503 (but /health)."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining and scope["path"] != "/health":
            await send_error(
                send, ServiceUnavailableError("The gateway is shutting down.", retry_after_s=5)
            )
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1
