"""Routing, pass-through and error shapes of the inference routes, over fake engines."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.unit.fakes import SSE_BODY

CHAT = {"model": "base", "messages": [{"role": "user", "content": "Capital of France?"}]}


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


async def test_chat_goes_to_the_engine_of_its_model(gateway, upstream):
    vllm = await gateway.post("/v1/chat/completions", json=CHAT)
    gguf = await gateway.post("/v1/chat/completions", json={**CHAT, "model": "base-gguf"})
    assert vllm.status_code == gguf.status_code == 200
    assert [r.url.host for r in upstream.seen] == ["vllm.test", "llama.test"]
    assert vllm.json()["choices"][0]["message"]["content"] == "Paris"


async def test_request_body_reaches_the_engine_unchanged(gateway, upstream):
    raw = b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], "top_k": 3}'
    response = await gateway.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert upstream.seen[0].content == raw  # unknown field kept, bytes untouched


async def test_stream_is_relayed_byte_for_byte(gateway):
    async with gateway.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = b"".join([chunk async for chunk in r.aiter_raw()])
    assert body == SSE_BODY


async def test_llamacpp_gets_max_completion_tokens_as_sent(gateway, upstream):
    # llama-server reads max_completion_tokens itself: nothing is translated.
    raw = json.dumps({**CHAT, "model": "base-gguf", "max_completion_tokens": 5}).encode()
    response = await gateway.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert upstream.seen[0].content == raw


async def test_completions_route(gateway, upstream):
    response = await gateway.post("/v1/completions", json={"model": "base", "prompt": "Hello"})
    assert response.status_code == 200
    assert upstream.seen[0].url.path == "/v1/completions"


async def test_unknown_model_is_404_model_not_found(gateway, upstream):
    response = await gateway.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    error = assert_openai_error(response, 404, "model_not_found")
    assert error["param"] == "model"
    assert not upstream.seen


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "temperature": 5}, "temperature"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages.[0].role"),
        ({**CHAT, "n": 0}, "n"),
        ({"messages": CHAT["messages"]}, "model"),
        ({**CHAT, "max_tokens": -1}, "max_tokens"),
    ],
)
async def test_bad_parameters_are_400_with_param(gateway, upstream, body, param):
    error = assert_openai_error(await gateway.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param
    assert not upstream.seen


@pytest.mark.parametrize(
    "raw", [b"{not json", b"[1, 2]", b"", "\udcff".encode("utf-8", "surrogatepass")]
)
async def test_malformed_bodies_are_400(gateway, raw):
    response = await gateway.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400)


async def test_engine_down_is_503_with_retry_after(gateway):
    gateway.app.state.runtime.engines["vllm/base"].up = False
    response = await gateway.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 503, "engine_unavailable")
    assert response.headers["retry-after"] == "7"


async def test_unreachable_engine_is_503(gateway, upstream):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    upstream.answer = refuse
    assert_openai_error(await gateway.post("/v1/chat/completions", json=CHAT), 503)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {
                "error": {
                    "message": "too long",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                }
            },
            400,
        ),
        (422, {"detail": [{"loc": ["body", "top_k"], "msg": "bad", "type": "x"}]}, 400),
        (500, {"detail": "Traceback (most recent call last): File /secret/path.py"}, 500),
    ],
)
async def test_engine_errors_become_openai_errors(gateway, upstream, status, body, expected):
    upstream.answer = lambda request: httpx.Response(status, json=body)
    response = await gateway.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, expected)
    assert "/secret/path.py" not in response.text and "Traceback" not in response.text


async def test_context_overflow_on_llama_server_is_400_that_says_so(gateway, upstream):
    overflow = {
        "error": {
            "code": 400,
            "message": "request (2100 tokens) exceeds the available context size (2048 tokens), "
            "try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 2100,
            "n_ctx": 2048,
        }
    }
    upstream.answer = lambda request: httpx.Response(400, json=overflow)
    response = await gateway.post("/v1/chat/completions", json={**CHAT, "model": "base-gguf"})
    error = assert_openai_error(response, 400, "context_length_exceeded")
    assert error["type"] == "invalid_request_error"
    assert "maximum context length is 2048 tokens" in error["message"]
    assert "2100" in error["message"] and "increasing" not in error["message"]


async def test_engine_admin_routes_are_not_reachable(gateway, upstream):
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        body = {"lora_name": "x", "lora_path": "/etc"}
        assert_openai_error(await gateway.post(path, json=body), 404)
    assert not upstream.seen


async def test_models_list_names_each_engine(gateway):
    data = (await gateway.get("/v1/models")).json()
    assert data["object"] == "list"
    engines = {m["id"]: m["engine"] for m in data["data"]}
    assert engines == {"base": "vllm", "base-gguf": "llama.cpp"}
    for model in data["data"]:
        assert {"id", "object", "created", "owned_by", "root", "parent"} <= set(model)
    assert (await gateway.get("/v1/models/base-gguf")).json()["engine"] == "llama.cpp"
    assert_openai_error(await gateway.get("/v1/models/missing"), 404, "model_not_found")


async def test_api_key_guards_every_route_but_health(make_gateway):
    gateway = make_gateway(api_key="s3cret")
    assert (await gateway.get("/health")).status_code == 200
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/metrics"),
        ("GET", "/ready"),
        ("GET", "/no/such/route"),
    ]:
        response = await gateway.request(method, path, json=CHAT)
        assert_openai_error(response, 401, "invalid_api_key")
        wrong = await gateway.request(
            method, path, json=CHAT, headers={"Authorization": "Bearer x"}
        )
        assert_openai_error(wrong, 401)
    ok = await gateway.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


async def test_oversized_body_is_413(make_gateway):
    gateway = make_gateway(max_request_bytes=1024)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2048}]}
    assert_openai_error(await gateway.post("/v1/chat/completions", json=big), 413)


async def test_ready_reports_engines(gateway):
    ready = await gateway.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    gateway.app.state.runtime.engines["vllm/base"].up = False
    down = await gateway.get("/ready")
    assert down.status_code == 503
    states = {e["name"]: e["state"] for e in down.json()["engines"]}
    assert states["vllm/base"] == "restarting"


async def test_metrics_count_requests_by_model_and_engine(gateway):
    await gateway.post("/v1/chat/completions", json=CHAT)
    await gateway.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    text = (await gateway.get("/metrics")).text
    assert 'tunegate_requests_total{engine="vllm",model="base",status="200"} 1.0' in text
    assert 'tunegate_requests_in_flight{engine="vllm",model="base"} 0.0' in text
    assert "tunegate_request_duration_seconds_bucket" in text


async def test_tools_on_a_vllm_base_without_a_tool_call_parser_is_a_clear_400(gateway, upstream):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    response = await gateway.post("/v1/chat/completions", json={**CHAT, "tools": tools})
    error = assert_openai_error(response, 400, "tool_calls_not_enabled")
    assert error["param"] == "tools" and "tool_call_parser" in error["message"]
    assert not upstream.seen  # refused before any engine saw it
