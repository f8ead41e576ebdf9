"""Forwards an inference request to the engine that serves its model.

Request bodies go out as the client sent them, unless the engine needs a field
translated (a table, per engine family). Answers come back as the engine's
bytes: streams are relayed chunk by chunk as they arrive, never parsed and
re-encoded.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from gateway.admission import AdmissionGate
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine
from gateway.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    TunegateError,
    error_body,
    error_from_upstream,
)
from gateway.metrics import GatewayMetrics
from gateway.protocol import OpenAIRequest
from gateway.settings import Settings

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class EngineReply:
    """An engine's successful answer: whole bytes, or a stream of SSE bytes."""

    status: int
    media_type: str
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None


@dataclass(frozen=True)
class RequestLimits:
    """Bounds checked before a request reaches an engine (settings request_max_*)."""

    max_tokens: int = 8192
    max_n: int = 8
    max_in_flight: int = 64
    max_queue: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(
            max_tokens=settings.request_max_tokens,
            max_n=settings.request_max_n,
            max_in_flight=settings.engine_max_in_flight,
            max_queue=settings.engine_max_queue,
        )

    def check(self, request: OpenAIRequest) -> None:
        bounds = {
            "max_tokens": self.max_tokens,
            "max_completion_tokens": self.max_tokens,
            "n": self.max_n,
            "best_of": self.max_n,
        }
        for param, bound in bounds.items():
            value = getattr(request, param, None)
            if isinstance(value, int) and value > bound:
                raise InvalidRequestError(
                    f"'{param}' may be at most {bound} here; it was {value}.",
                    param=param,
                    code="invalid_value",
                )


BodyAdapter = Callable[[ModelEntry, OpenAIRequest, bytes], bytes]


def unchanged(entry: ModelEntry, request: OpenAIRequest, raw: bytes) -> bytes:
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
    """One forwarded request's bookkeeping: its admission slot and its metrics, closed once."""

    def __init__(self, metrics: GatewayMetrics, gate: AdmissionGate, entry: ModelEntry) -> None:
        self._metrics = metrics
        self._gate = gate
        self.labels = (entry.id, entry.engine)
        self._started = time.perf_counter()
        self._admitted = False
        self._open = True
        metrics.in_flight.labels(*self.labels).inc()

    async def admit(self) -> None:
        await self._gate.enter()
        self._admitted = True

    def close(self, status: int) -> None:
        if not self._open:
            return
        self._open = False
        if self._admitted:
            self._gate.leave()
        self._metrics.in_flight.labels(*self.labels).dec()
        self._metrics.requests.labels(*self.labels, str(status)).inc()
        self._metrics.latency.labels(*self.labels).observe(time.perf_counter() - self._started)


class Forwarder:
    def __init__(
        self,
        catalog: ModelCatalog,
        engines: dict[str, Engine],
        http: httpx.AsyncClient,
        metrics: GatewayMetrics,
        limits: RequestLimits | None = None,
    ) -> None:
        self._catalog = catalog
        self._engines = engines
        self._http = http
        self._metrics = metrics
        self._limits = limits or RequestLimits()
        self._gates: dict[str, AdmissionGate] = {}

    def _gate(self, engine_key: str) -> AdmissionGate:
        gate = self._gates.get(engine_key)
        if gate is None:
            gate = AdmissionGate(engine_key, self._limits.max_in_flight, self._limits.max_queue)
            self._gates[engine_key] = gate
        return gate

    async def forward(self, path: str, request: OpenAIRequest, raw_body: bytes) -> EngineReply:
        self._limits.check(request)
        entry = self._catalog.resolve(request.model)
        if request.model_extra and log.isEnabledFor(logging.DEBUG):  # the hot path: no sorting
            log.debug("passing unknown fields to %s: %s", entry.engine, request.unknown_fields())
        engine = self._engines[entry.engine_key]
        ticket = _Request(self._metrics, self._gate(entry.engine_key), entry)
        try:
            await ticket.admit()
            upstream = await engine.upstream_for(entry)
            body = BODY_ADAPTERS.get(entry.engine, unchanged)(entry, request, raw_body)
            if request.model != entry.id:  # an alias: the engine knows the full id
                body = _with_model(body, entry.id)
            outgoing = self._http.build_request(
                "POST",
                upstream.base_url + path,
                content=body,
                headers={**_JSON_HEADERS, **upstream.headers},
            )
            response = await self._send(outgoing, entry)
            if response.status_code >= 400:
                payload = await response.aread()
                await response.aclose()
                raise error_from_upstream(response.status_code, payload)
            if request.stream:
                relay = self._relay(response, ticket)
                return EngineReply(response.status_code, "text/event-stream", chunks=relay)
            payload = await response.aread()
            await response.aclose()
        except TunegateError as error:
            ticket.close(error.status_code)
            raise
        except BaseException:
            ticket.close(500)
            raise
        ticket.close(response.status_code)
        media_type = response.headers.get("content-type", "application/json")
        return EngineReply(response.status_code, media_type, body=payload)

    async def _send(self, outgoing: httpx.Request, entry: ModelEntry) -> httpx.Response:
        try:
            return await self._http.send(outgoing, stream=True)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise EngineUnavailableError(
                f"The {entry.engine} engine serving '{entry.id}' is not reachable; retry shortly.",
                retry_after_s=5,
            ) from exc
        except httpx.TimeoutException as exc:
            raise EngineUnavailableError(
                f"The {entry.engine} engine serving '{entry.id}' did not answer in time.",
                retry_after_s=5,
            ) from exc

    async def _relay(self, response: httpx.Response, ticket: _Request) -> AsyncIterator[bytes]:
        status = response.status_code
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError:
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
