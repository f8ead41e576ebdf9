"""Secure defaults in front of every route: what a web page the user visits cannot do.

A gateway without an API key on localhost is reachable from any page in the
user's browser. Three checks close that, before the key check and the routes:

- ``Host`` must name this gateway (localhost, 127.0.0.1, [::1], the bound
  address, the ``allowed_hosts`` setting): a page whose name was rebound to
  127.0.0.1 (DNS rebinding) sends its own name, and is refused.
- A request with an ``Origin`` other than the gateway's own is refused unless
  ``cors_origins`` lists it; listed origins get CORS answers and preflights.
  Browsers send ``Origin`` on every cross-site POST, forms and ``no-cors``
  fetches included, so no page can start a job, an upload or an import.
- A state-changing request with a body must declare what the route reads:
  ``application/json``, or ``multipart/form-data`` on upload routes. A page's
  "simple" requests (``text/plain``, no type) never reach a JSON parser.

SDKs and curl send no ``Origin`` and pass. The checks cost a dict of the
headers and a few lookups per request: this sits on every request's path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InvalidRequestError, PermissionDeniedError
from gateway.middleware import send_error
from gateway.settings import Settings

JSON = b"application/json"
MULTIPART = b"multipart/form-data"
# The names of the machine itself; any port.
LOOPBACK_NAMES = frozenset({b"localhost", b"127.0.0.1", b"[::1]"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_JSON_ONLY = frozenset({JSON})
_PREFLIGHT_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
_PREFLIGHT_MAX_AGE_S = b"600"
_SHOWN = 100  # characters of a refused Host or Origin repeated in the error


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the gateway on this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """A gateway reachable from other machines needs a key: refuse to start without one."""
    keyless = settings.api_key is None or not settings.api_key.get_secret_value()
    if keyless and not is_loopback(settings.host):
        raise SystemExit(
            f"tunegate: refusing to listen on {settings.host} without an API key: set one "
            "(TUNEGATE_API_KEY or --api-key), or bind 127.0.0.1 (--host 127.0.0.1)."
        )


class SecurityPolicy:
    """What the middleware allows, read once from the settings."""

    def __init__(self, settings: Settings, body_types: Mapping[str, Iterable[bytes]]) -> None:
        hosts = {h.encode() for h in settings.allowed_hosts}
        self.any_host = b"*" in hosts
        self.hosts = frozenset(LOOPBACK_NAMES | {_bracketed(h) for h in hosts})
        bind = settings.host.lower()
        # Bound to every address: a client may name any of them, and an IP address
        # cannot be rebound (rebinding needs a name the attacker controls).
        self.any_ip_host = bind in WILDCARD_BINDS
        if not self.any_ip_host:
            self.hosts |= {_bracketed(bind.encode())}
        origins = {o.encode() for o in settings.cors_origins}
        self.any_origin = b"*" in origins
        self.origins = frozenset(origins)
        self.body_types = {path: frozenset(types) for path, types in body_types.items()}

    def host_allowed(self, host: bytes) -> bool:
        name = _hostname(host)
        if name in self.hosts or self.any_host:
            return True
        return self.any_ip_host and _is_ip(name)

    def origin_allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins


class SecurityMiddleware:
    """Host allow-list, Origin check and CORS, and body content types (pure ASGI)."""

    def __init__(self, app: ASGIApp, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").lower()
        if not self.policy.host_allowed(host):
            await send_error(send, _host_refused(host))
            return
        origin = headers.get(b"origin")
        # Same origin: the /ui page, served by the gateway under the name it was called by.
        if origin is not None and origin.lower().partition(b"://")[2] != host:
            if not self.policy.origin_allowed(origin):
                await send_error(send, _origin_refused(origin))
                return
            if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                await _answer_preflight(send, origin, headers)
                return
            send = _with_cors(send, origin)
        if scope["method"] in STATE_CHANGING and _has_body(headers):
            path = scope["path"].rstrip("/")
            accepted = self.policy.body_types.get(path, _JSON_ONLY)
            media = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
            if media not in accepted:
                await send_error(send, _type_refused(media, accepted))
                return
        await self.app(scope, receive, send)


def _hostname(host: bytes) -> bytes:
    """``name[:port]`` or ``[v6][:port]`` without the port."""
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    return host.partition(b":")[0]


def _bracketed(name: bytes) -> bytes:
    """IPv6 addresses as a Host header writes them."""
    return b"[" + name + b"]" if b":" in name and not name.startswith(b"[") else name


def _is_ip(name: bytes) -> bool:
    try:
        ipaddress.ip_address(name.strip(b"[]").decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    return (length is not None and length.strip().strip(b"0") != b"") or (
        b"transfer-encoding" in headers
    )


async def _answer_preflight(send: Send, origin: bytes, headers: dict[bytes, bytes]) -> None:
    answer = [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", _PREFLIGHT_METHODS),
        (b"access-control-max-age", _PREFLIGHT_MAX_AGE_S),
        (b"vary", b"Origin"),
        (b"content-length", b"0"),
    ]
    asked = headers.get(b"access-control-request-headers")
    if asked:  # an allowed origin may send any header (the key, the SDKs' own)
        answer.append((b"access-control-allow-headers", asked))
    await send({"type": "http.response.start", "status": 204, "headers": answer})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: bytes) -> Send:
    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                *message.get("headers", ()),
                (b"access-control-allow-origin", origin),
                (b"access-control-expose-headers", b"Retry-After"),
                (b"vary", b"Origin"),
            ]
        await send(message)

    return send_with_cors


def _shown(value: bytes) -> str:
    return value[:_SHOWN].decode("latin-1")


def _host_refused(host: bytes) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"Host '{_shown(host)}' is not allowed: this gateway answers to localhost, 127.0.0.1 "
        "and [::1] (a guard against DNS rebinding). Add the name to the allowed_hosts setting "
        "(--allowed-hosts, TUNEGATE_ALLOWED_HOSTS) to allow it.",
        code="host_not_allowed",
    )


def _origin_refused(origin: bytes) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"Cross-origin requests from '{_shown(origin)}' are refused. Add the origin to the "
        "cors_origins setting (--cors-origins, TUNEGATE_CORS_ORIGINS) to allow its pages to "
        "call this gateway.",
        code="origin_not_allowed",
    )


def _type_refused(media: bytes, accepted: frozenset[bytes]) -> InvalidRequestError:
    wanted = " or ".join(sorted(t.decode() for t in accepted))
    got = f"'{_shown(media)}'" if media else "none"
    return InvalidRequestError(
        f"This route takes a body of Content-Type {wanted} (got {got}).",
        code="unsupported_content_type",
    )
