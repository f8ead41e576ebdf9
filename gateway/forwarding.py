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

from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine
from gateway.errors import EngineUnavailableError, TunegateError, error_body, error_from_upstream
from gateway.metrics import GatewayMetrics
from gateway.protocol import OpenAIRequest

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}


@dataclass(frozen=True)
class EngineReply:
    """An engine's successful answer: whole bytes, or a stream of SSE bytes."""

    status: int
    media_type: str
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None


BodyAdapter = Callable[[ModelEntry, OpenAIRequest, bytes], bytes]


def unchanged(entry: ModelEntry, request: OpenAIRequest, raw: bytes) -> bytes:
    return raw


def for_llamacpp(entry: ModelEntry, request: OpenAIRequest, raw: bytes) -> bytes:
    """llama-cpp-python's server reads ``max_tokens`` only; newer SDK code sends
    ``max_completion_tokens``. Rewrite the body only when that translation is needed."""
    if getattr(request, "max_completion_tokens", None) is None or request.max_tokens is not None:
        return raw
    payload = json.loads(raw)
    payload["max_tokens"] = payload.pop("max_completion_tokens")
    return json.dumps(payload).encode()


BODY_ADAPTERS: dict[str, BodyAdapter] = {
    "vllm": unchanged,
    "llama.cpp": for_llamacpp,
}


def _with_model(raw: bytes, model_id: str) -> bytes:
    payload = json.loads(raw)
    payload["model"] = model_id
    return json.dumps(payload).encode()


class Forwarder:
    def __init__(
        self,
        catalog: ModelCatalog,
        engines: dict[str, Engine],
        http: httpx.AsyncClient,
        metrics: GatewayMetrics,
    ) -> None:
        self._catalog = catalog
        self._engines = engines
        self._http = http
        self._metrics = metrics

    async def forward(self, path: str, request: OpenAIRequest, raw_body: bytes) -> EngineReply:
        entry = self._catalog.resolve(request.model)
        if request.model_extra:
            log.debug("passing unknown fields to %s: %s", entry.engine, request.unknown_fields())
        engine = self._engines[entry.engine_key]
        started = time.perf_counter()
        labels = (entry.id, entry.engine)
        in_flight = self._metrics.in_flight.labels(*labels)
        in_flight.inc()
        try:
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
                relay = self._relay(response, labels, started)
                return EngineReply(response.status_code, "text/event-stream", chunks=relay)
            payload = await response.aread()
            await response.aclose()
        except TunegateError as error:
            self._finish(labels, error.status_code, started)
            raise
        except BaseException:
            self._finish(labels, 500, started)
            raise
        self._finish(labels, response.status_code, started)
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

    async def _relay(
        self, response: httpx.Response, labels: tuple[str, str], started: float
    ) -> AsyncIterator[bytes]:
        status = response.status_code
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError:
            # The engine died mid-stream: end the stream with an error event the
            # openai SDK raises as APIError, instead of a truncated body.
            status = 503
            log.warning("%s stream from %s broke off", labels[0], labels[1])
            event = error_body(
                "The engine stopped while streaming the answer.",
                "service_unavailable",
                code="engine_unavailable",
            )
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        finally:
            await response.aclose()
            self._finish(labels, status, started)

    def _finish(self, labels: tuple[str, str], status: int, started: float) -> None:
        self._metrics.in_flight.labels(*labels).dec()
        self._metrics.requests.labels(*labels, str(status)).inc()
        self._metrics.latency.labels(*labels).observe(time.perf_counter() - started)
