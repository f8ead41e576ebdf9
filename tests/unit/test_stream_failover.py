"""The forwarder with its real stream client: failover and errors as with httpx, against
scripted socket servers standing in for two replicas of one engine."""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass, field

import httpx
import pytest

from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Lease, Upstream
from gateway.engines.process import free_port
from gateway.errors import EngineUnavailableError, ReplicaUnreachableError
from gateway.forwarding import Forwarder, RequestLimits
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest
from gateway.stream_client import open_stream
from tests.unit.test_stream_client import EVENTS, SSE_HEAD, chunk, read_request, server

BODY = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "stream": True}


@dataclass
class Replicas:
    """One engine of several replicas: the first one not avoided answers."""

    urls: dict[str, str]
    unreachable: list[str] = field(default_factory=list)

    async def acquire(self, entry: ModelEntry, avoid: frozenset[str] = frozenset()) -> Lease:
        replica = next(name for name in self.urls if name not in avoid)
        return Lease(replica, Upstream(self.urls[replica]))

    def report_unreachable(self, replica: str) -> None:
        self.unreachable.append(replica)


def forwarder(engine: Replicas, read_timeout_s: float = 5.0) -> Forwarder:
    catalog = ModelCatalog()
    catalog.add(ModelEntry("base", "base", "vllm", "vllm/base", None))
    opener = functools.partial(open_stream, connect_timeout_s=2.0, read_timeout_s=read_timeout_s)
    return Forwarder(
        catalog,
        {"vllm/base": engine},  # type: ignore[dict-item]
        httpx.AsyncClient(),
        GatewayMetrics(),
        RequestLimits(retries=1),
        opener,
    )


async def relayed(engine: Replicas, read_timeout_s: float = 5.0) -> bytes:
    reply = await forwarder(engine, read_timeout_s).forward(
        "/v1/chat/completions",
        ChatCompletionRequest.model_validate(BODY),
        json.dumps(BODY).encode(),
    )
    assert reply.chunks is not None
    return b"".join([piece async for piece in reply.chunks])


async def answers(reader, writer):  # type: ignore[no-untyped-def]
    await read_request(reader)
    writer.write(SSE_HEAD + b"".join(chunk(e) for e in EVENTS) + b"0\r\n\r\n")
    await reader.read()


async def hangs_up(reader, writer):  # type: ignore[no-untyped-def]
    await read_request(reader)


async def test_a_refused_replica_is_reported_and_the_next_one_answers():
    async with server(answers) as good:
        engine = Replicas({"a": f"http://127.0.0.1:{free_port()}", "b": good})
        assert await relayed(engine) == b"".join(EVENTS)
    assert engine.unreachable == ["a"]


async def test_a_replica_that_drops_the_request_is_passed_over_without_leaving_routing():
    async with server(hangs_up) as bad, server(answers) as good:
        engine = Replicas({"a": bad, "b": good})
        assert await relayed(engine) == b"".join(EVENTS)
    assert engine.unreachable == []  # dropped, not refused: its health check decides


async def test_no_replica_reachable_is_503():
    engine = Replicas({name: f"http://127.0.0.1:{free_port()}" for name in ("a", "b")})
    with pytest.raises(ReplicaUnreachableError) as caught:
        await relayed(engine)
    assert caught.value.status_code == 503


async def test_an_engine_that_never_answers_is_503_without_a_retry():
    async def silent(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        await asyncio.sleep(2)

    async with server(silent) as slow, server(answers) as good:
        engine = Replicas({"a": slow, "b": good})
        with pytest.raises(EngineUnavailableError) as caught:
            await relayed(engine, read_timeout_s=0.3)
    assert not isinstance(caught.value, ReplicaUnreachableError)
    assert "did not answer in time" in caught.value.message


async def test_a_stream_that_breaks_ends_with_an_error_event():
    async def dies(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(EVENTS[0]))
        await writer.drain()

    async with server(dies) as url:
        body = await relayed(Replicas({"a": url}))
    first, error = body.split(b"\n\n", 1)
    assert first + b"\n\n" == EVENTS[0]
    event = json.loads(error.removeprefix(b"data: "))
    assert event["error"]["code"] == "engine_unavailable"
