"""Forwards an inference request to the engine that serves its model.

Request bodies go out as the client sent them, unless the engine needs a field
translated (a table, per engine family). Answers come back as the engine's
bytes: streams are relayed chunk by chunk as they arrive, never parsed and
re-encoded. Answers come over the gateway's lean client (``stream_client``: kept-alive
connections, parsed in C), which costs a fraction of httpx's CPU per request and per
chunk; without one (the unit tests' fake engines) they go through httpx.

Failover: a request that got no answer from its replica (the connection was
refused, or dropped before the answer began) is sent again to another replica,
up to ``request_retries`` times; that replica is taken out of routing at once.
Generating has no side effects, so sending again is safe. Once an answer has
begun, it is relayed as it is; a stream that breaks ends with an error event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx

from gateway.admission import AdmissionGate
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine, Lease
from gateway.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    ReplicaUnreachableError,
    TunegateError,
    error_body,
    error_from_upstream,
)
from gateway.metrics import GatewayMetrics, ModelMetrics
from gateway.protocol import RoutedRequest
from gateway.settings import Settings
from gateway.stream_client import (
    StreamConnectError,
    StreamDroppedError,
    StreamedAnswer,
    StreamError,
    StreamTimeoutError,
)

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}

UpstreamResponse = httpx.Response | StreamedAnswer

# What the two clients raise when no answer began (refused: nobody listens), or
# when the engine took too long.
_REFUSED = (httpx.ConnectError, StreamConnectError)
_NO_ANSWER = (*_REFUSED, httpx.RemoteProtocolError, httpx.ReadError, StreamDroppedError)
_TIMED_OUT = (httpx.TimeoutException, StreamTimeoutError)
# (url, body, headers) -> the answer, once its headers are in.
StreamOpener = Callable[[str, bytes, dict[str, str]], Awaitable[UpstreamResponse]]


@dataclass(frozen=True)
class EngineReply:
    """An engine's successful answer: whole bytes, or a stream of SSE bytes.

    ``abandon`` releases what a stream holds (the engine's response, the request's
    admission slot and replica) when the stream is never read to its end, or never
    read at all: a client that leaves before the first chunk never starts it."""

    status: int
    media_type: str
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    abandon: Callable[[], Awaitable[None]] | None = None


# The request fields with an upper bound, and the limit that bounds each.
_BOUNDED_PARAMS = (
    ("max_tokens", "max_tokens"),
    ("max_completion_tokens", "max_tokens"),
    ("max_output_tokens", "max_tokens"),  # the Responses API's name
    ("n", "max_n"),
    ("best_of", "max_n"),
)


@dataclass(frozen=True)
class RequestLimits:
    """Bounds checked before a request reaches an engine (settings request_max_*)."""

    max_tokens: int = 8192
    max_n: int = 8
    max_in_flight: int = 64
    max_queue: int = 256
    retries: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_tokens=settings.request_max_tokens,
            max_n=settings.request_max_n,
            max_in_flight=settings.engine_max_in_flight,
            max_queue=settings.engine_max_queue,
            retries=settings.request_retries,
        )

    def check(self, request: RoutedRequest) -> None:
        # Read from the model's dicts, not with getattr: a field the request's model does
        # not declare would cost pydantic an AttributeError on every request.
        declared, extra = request.__dict__, request.model_extra or {}
        for param, limit in _BOUNDED_PARAMS:
            value = declared.get(param, extra.get(param))
            bound = getattr(self, limit)
            if isinstance(value, int) and value > bound:
                raise InvalidRequestError(
                    f"'{param}' may be at most {bound} here; it was {value}.",
                    param=param,
                    code="invalid_value",
                )


def check_tools(catalog: ModelCatalog, entry: ModelEntry, request: RoutedRequest) -> None:
    """vLLM answers a request with ``tools`` only when it was started with a tool-call
    parser for the model's family; say which setting gives it one, up front."""
    if entry.engine != "vllm" or not getattr(request, "tools", None):
        return
    base = catalog.resolve(entry.root or entry.id)
    if base.extra.get("tool_call_parser"):
        return
    raise InvalidRequestError(
        f"Tool calls are not enabled for '{base.id}': its vLLM engine runs without a "
        'tool-call parser. Set "tool_call_parser" in the model\'s entry of the models setting '
        f'(for example TUNEGATE_MODELS=\'[{{"id": "{base.id}", "tool_call_parser": "hermes"}}]\'); '
        "docs/compatibility.md lists the parser of each model family.",
        param="tools",
        code="tool_calls_not_enabled",
    )


BodyAdapter = Callable[[ModelEntry, RoutedRequest, bytes], bytes]


def unchanged(entry: ModelEntry, request: RoutedRequest, raw: bytes) -> bytes:
    return raw


# vLLM and llama-server both read OpenAI's fields (max_completion_tokens included)
# as sent; an engine that needs a field translated gets a row of its own.
BODY_ADAPTERS: dict[str, BodyAdapter] = {
    "vllm": unchanged,
    "llama.cpp": unchanged,
}


def _with_model(raw: bytes, model_id: str) -> bytes:
    payload = json.loads(raw)
    payload["model"] = model_id
    return json.dumps(payload).encode()


class _Request:
    """One forwarded request's bookkeeping: its admission slot, its place on a replica
    and its metrics, closed once."""

    def __init__(self, metrics: ModelMetrics, gate: AdmissionGate) -> None:
        self._metrics = metrics
        self._gate = gate
        self.labels = (metrics.model, metrics.engine)
        self._started = time.perf_counter()
        self._admitted = False
        self._open = True
        self.lease: Lease | None = None
        metrics.in_flight.inc()

    async def admit(self) -> None:
        await self._gate.enter()
        self._admitted = True

    def hold(self, lease: Lease) -> None:
        self.lease = lease

    def let_go(self) -> None:
        if self.lease is not None:
            self.lease.done()
            self.lease = None

    def close(self, status: int) -> None:
        if not self._open:
            return
        self._open = False
        self.let_go()
        if self._admitted:
            self._gate.leave()
        self._metrics.in_flight.dec()
        self._metrics.answered(status).inc()
        self._metrics.latency.observe(time.perf_counter() - self._started)


class Forwarder:
    def __init__(
        self,
        catalog: ModelCatalog,
        engines: dict[str, Engine],
        http: httpx.AsyncClient,
        metrics: GatewayMetrics,
        limits: RequestLimits | None = None,
        open_answer: StreamOpener | None = None,
    ) -> None:
        """``open_answer`` opens engine answers, streamed or not (the lean client);
        without it they go through ``http`` (the unit tests' fake engines are an httpx
        transport)."""
        self._catalog = catalog
        self._engines = engines
        self._http = http
        self._metrics = metrics
        self._limits = limits or RequestLimits()
        self._open_answer = open_answer or self._post
        self._gates: dict[str, AdmissionGate] = {}

    def _gate(self, engine_key: str) -> AdmissionGate:
        gate = self._gates.get(engine_key)
        if gate is None:
            # The limits are per replica: a set of eight admits eight times one.
            replicas = getattr(self._engines[engine_key], "replica_count", 1)
            gate = AdmissionGate(
                engine_key,
                self._limits.max_in_flight * replicas,
                self._limits.max_queue * replicas,
            )
            self._gates[engine_key] = gate
        return gate

    async def forward(self, path: str, request: RoutedRequest, raw_body: bytes) -> EngineReply:
        self._limits.check(request)
        entry = self._catalog.resolve(request.model)
        check_tools(self._catalog, entry, request)
        if request.model_extra and log.isEnabledFor(logging.DEBUG):  # the hot path: no sorting
            log.debug("passing unknown fields to %s: %s", entry.engine, request.unknown_fields())
        engine = self._engines[entry.engine_key]
        ticket = _Request(
            self._metrics.of_model(entry.id, entry.engine), self._gate(entry.engine_key)
        )
        try:
            await ticket.admit()
            body = BODY_ADAPTERS.get(entry.engine, unchanged)(entry, request, raw_body)
            if request.model != entry.id:  # an alias: the engine knows the full id
                body = _with_model(body, entry.id)
            response = await self._send_with_failover(engine, entry, path, body, ticket)
            if response.status_code >= 400:
                payload = await response.aread()
                await response.aclose()
                raise error_from_upstream(response.status_code, payload)
            if request.stream:
                relay = self._relay(response, ticket)

                async def abandon() -> None:
                    await response.aclose()
                    ticket.close(499)

                return EngineReply(
                    response.status_code, "text/event-stream", chunks=relay, abandon=abandon
                )
            payload = await response.aread()
            await response.aclose()
        except TunegateError as error:
            ticket.close(error.status_code)
            raise
        except asyncio.CancelledError:
            ticket.close(499)  # the client went away
            raise
        except BaseException:
            ticket.close(500)
            raise
        ticket.close(response.status_code)
        media_type = response.headers.get("content-type", "application/json")
        return EngineReply(response.status_code, media_type, body=payload)

    async def _send_with_failover(
        self,
        engine: Engine,
        entry: ModelEntry,
        path: str,
        body: bytes,
        ticket: _Request,
    ) -> UpstreamResponse:
        tried: frozenset[str] = frozenset()
        for attempt in range(self._limits.retries + 1):
            lease = await engine.acquire(entry, avoid=tried)
            ticket.hold(lease)
            try:
                return await self._send(
                    lease.upstream.base_url + path,
                    lease.upstream.body_for(body),  # llama-server's adapter choice, if any
                    {**_JSON_HEADERS, **lease.upstream.headers},
                    entry,
                    lease.replica,
                )
            except ReplicaUnreachableError as error:
                ticket.let_go()
                if error.refused:  # nobody listens there: out of routing at once
                    engine.report_unreachable(error.replica)
                tried = tried | {error.replica}
                if attempt == self._limits.retries:
                    raise
                log.warning("%s: %s; trying another replica", entry.id, error.message)
        raise AssertionError("unreachable")

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        outgoing = self._http.build_request("POST", url, content=body, headers=headers)
        return await self._http.send(outgoing, stream=True)

    async def _send(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        entry: ModelEntry,
        replica: str,
    ) -> UpstreamResponse:
        try:
            return await self._open_answer(url, body, headers)
        except _NO_ANSWER as exc:
            # No answer began: the replica refused the connection, or dropped it (it died,
            # or closed a kept-alive connection as it was reused; its health check tells).
            raise ReplicaUnreachableError(
                replica,
                f"The {entry.engine} engine serving '{entry.id}' ({replica}) is not reachable; "
                "retry shortly.",
                refused=isinstance(exc, _REFUSED),
            ) from exc
        except _TIMED_OUT as exc:
            raise EngineUnavailableError(
                f"The {entry.engine} engine serving '{entry.id}' did not answer in time.",
                retry_after_s=5,
            ) from exc

    async def _relay(self, response: UpstreamResponse, ticket: _Request) -> AsyncIterator[bytes]:
        status = response.status_code
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except (httpx.HTTPError, StreamError):
            # The engine died mid-stream: end the stream with an error event the
            # openai SDK raises as APIError, instead of a truncated body.
            status = 503
            log.warning("%s stream from %s broke off", *ticket.labels)
            event = error_body(
                "The engine stopped while streaming the answer.",
                "service_unavailable",
                code="engine_unavailable",
            )
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        finally:
            # Closing the engine's response also ends the generation there when
            # the client went away first.
            await response.aclose()
            ticket.close(status)
