"""Admission control, request bounds, the key on every route, and draining, over fake engines."""

from __future__ import annotations

import asyncio
import re

import httpx
from fastapi.routing import APIRoute

from tests.unit.fakes import chat_completion
from tests.unit.test_routing import CHAT, assert_openai_error


async def test_past_the_in_flight_limit_and_queue_requests_get_429_at_once(make_gateway, upstream):
    gateway = make_gateway(engine_max_in_flight=2, engine_max_queue=1)
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=chat_completion("base", "ok"))

    gateway.app.state.runtime.http._transport = httpx.MockTransport(slow)  # type: ignore[attr-defined]
    admitted = [
        asyncio.create_task(gateway.post("/v1/chat/completions", json=CHAT)) for _ in range(3)
    ]
    await asyncio.sleep(0.1)  # two run, one waits in the queue
    refused = await asyncio.wait_for(gateway.post("/v1/chat/completions", json=CHAT), timeout=1)
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert refused.headers["retry-after"] == "1"
    release.set()
    assert [r.status_code for r in await asyncio.gather(*admitted)] == [200, 200, 200]
    assert (await gateway.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_bounds_are_checked_before_the_engine(make_gateway, upstream):
    gateway = make_gateway(request_max_tokens=100, request_max_n=2)
    for field, value in (("max_tokens", 101), ("max_completion_tokens", 500), ("n", 3)):
        response = await gateway.post("/v1/chat/completions", json={**CHAT, field: value})
        assert assert_openai_error(response, 400)["param"] == field
    completion = {"model": "base", "prompt": "x", "best_of": 3}
    assert (
        assert_openai_error(await gateway.post("/v1/completions", json=completion), 400)["param"]
        == "best_of"
    )
    # A bounded field the chat request does not declare is bounded all the same.
    undeclared = await gateway.post("/v1/chat/completions", json={**CHAT, "best_of": 3})
    assert assert_openai_error(undeclared, 400)["param"] == "best_of"
    assert not upstream.seen
    assert (
        await gateway.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100})
    ).status_code == 200


async def test_every_route_but_health_and_ui_needs_the_key(make_gateway):
    gateway = make_gateway(api_key="s3cret")
    routes = [r for r in gateway.app.routes if isinstance(r, APIRoute)]
    assert len(routes) > 25
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in route.methods:
            response = await gateway.request(method, path)
            if route.path in ("/health", "/ui"):
                assert response.status_code == 200, path
            else:
                assert_openai_error(response, 401, "invalid_api_key")
    assert_openai_error(await gateway.get("/docs"), 401)
    assert_openai_error(await gateway.get("/openapi.json"), 401)


async def test_draining_turns_ready_and_new_requests_503(gateway):
    gateway.app.state.drain.draining = True
    assert (await gateway.get("/health")).status_code == 200
    ready = await gateway.get("/ready")
    assert_openai_error(ready, 503, "service_unavailable")
    assert ready.headers["retry-after"] == "5"
    assert_openai_error(await gateway.post("/v1/chat/completions", json=CHAT), 503)
