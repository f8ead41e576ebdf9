"""The Responses API over fake engines: passed through to vLLM, translated for llama.cpp.

The wire format is checked strictly: every object and event validates against
the openai SDK's own types, and the SDK parses the answers unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.unit.fake_responses import ResponsesUpstream
from tests.unit.fakes import ChunkedStream, chat_completion

STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
ASK = {"model": "base-gguf", "input": "What is the capital of France?"}


@pytest.fixture
def upstream() -> ResponsesUpstream:
    return ResponsesUpstream()


@pytest.fixture
def sdk(gateway: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://localhost/v1", api_key="unused", http_client=gateway, max_retries=0
    )


def chat_stream(*chunks: dict[str, Any]) -> httpx.Response:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return httpx.Response(
        200,
        stream=ChunkedStream(body + b"data: [DONE]\n\n", size=11),
        headers={"content-type": "text/event-stream"},
    )


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "choices": [choice]}


USAGE_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 1,
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}


async def raw_events(gateway: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's events, each checked against the SDK's event types."""
    async with gateway.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200, await reply.aread()
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = (await reply.aread()).decode()
    events = []
    for block in text.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        event = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {event['type']}"
        STREAM_EVENT.validate_python(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


async def test_llamacpp_answers_through_chat_with_an_exact_response(gateway, upstream, sdk):
    reply = await gateway.post(
        "/v1/responses", json={**ASK, "instructions": "Be brief.", "max_output_tokens": 5}
    )
    assert reply.status_code == 200, reply.text
    response = Response.model_validate(reply.json())  # every required field, typed
    assert response.output_text == "Paris"
    assert response.status == "completed" and response.model == "base-gguf"
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 1)
    assert response.usage.total_tokens == 4
    sent = upstream.seen[0]
    assert sent.url.path == "/v1/chat/completions" and sent.url.host == "llama.test"
    assert json.loads(sent.content)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": ASK["input"]},
    ]
    assert json.loads(sent.content)["max_tokens"] == 5
    assert (await sdk.responses.create(**ASK)).output_text == "Paris"


async def test_llamacpp_stream_is_the_responses_event_sequence(gateway, upstream, sdk):
    upstream.answer = lambda _: chat_stream(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Pa"}),
        chunk({"content": "ris"}),
        chunk({}, "stop"),
        USAGE_CHUNK,
    )
    events = await raw_events(gateway, ASK)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(e["delta"] for e in events if e["type"].endswith(".delta")) == "Paris"
    done = Response.model_validate(events[-1]["response"])
    assert done.output_text == "Paris" and done.usage is not None
    assert done.usage.output_tokens == 2 and done.usage.input_tokens == 9
    assert json.loads(upstream.seen[0].content)["stream_options"] == {"include_usage": True}
    async with sdk.responses.stream(**ASK) as stream:  # the SDK's own accumulator
        assert (await stream.get_final_response()).output_text == "Paris"


async def test_vllm_serves_responses_itself_and_stores_nothing(gateway, upstream, sdk):
    response = await sdk.responses.create(model="base", input="Hi", extra_body={"top_k": 3})
    assert response.output_text == "Paris"
    sent = upstream.seen[0]
    assert sent.url.path == "/v1/responses" and sent.url.host == "vllm.test"
    assert json.loads(sent.content) == {"model": "base", "input": "Hi", "top_k": 3, "store": False}
    raw = b'{"model": "base", "input": "Hi", "store": false}'
    reply = await gateway.post(
        "/v1/responses", content=raw, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 200 and upstream.seen[1].content == raw  # bytes untouched


async def test_vllm_stream_is_relayed_byte_for_byte(gateway, upstream):
    events = b'event: response.created\ndata: {"type":"response.created"}\n\n'
    upstream.answer = lambda _: httpx.Response(
        200, stream=ChunkedStream(events), headers={"content-type": "text/event-stream"}
    )
    body = {"model": "base", "input": "Hi", "stream": True}
    async with gateway.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.status_code == 200
        assert b"".join([c async for c in reply.aiter_raw()]) == events


@pytest.mark.parametrize("model", ["base", "base-gguf"])
@pytest.mark.parametrize(
    ("stateful", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ],
)
async def test_stateful_requests_are_400_on_every_engine(sdk, upstream, model, stateful, param):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model=model, input="Hi", **stateful)
    assert caught.value.param == param
    assert "on this gateway" in caught.value.message
    assert not upstream.seen


async def test_stored_responses_cannot_be_read_back(sdk, gateway):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.retrieve("resp_1")
    assert caught.value.param == "response_id" and "not stored" in caught.value.message
    for method, path in [("DELETE", "/v1/responses/r"), ("POST", "/v1/responses/r/cancel")]:
        assert (await gateway.request(method, path)).status_code == 400


async def test_input_items_become_chat_messages(gateway, upstream):
    items = [
        {"role": "developer", "content": "Answer with a tool."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Wx?"}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    tool = {"type": "function", "name": "weather", "parameters": {"type": "object"}}
    body = {
        "model": "base-gguf",
        "input": items,
        "tools": [tool],
        "tool_choice": {"type": "function", "name": "weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
    }
    assert (await gateway.post("/v1/responses", json=body)).status_code == 200
    sent = json.loads(upstream.seen[0].content)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer with a tool."},
        {"role": "user", "content": "Wx?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c, "type": "function", "function": {"name": n, "arguments": "{}"}}
                for c, n in [("c1", "weather"), ("c2", "time")]
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}},
    }


async def test_tool_calls_come_back_as_function_call_items(gateway, upstream):
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
        ],
    }
    answer = chat_completion("base-gguf", "")
    answer["choices"] = [{"index": 0, "message": message, "finish_reason": "tool_calls"}]
    upstream.answer = lambda _: httpx.Response(200, json=answer)
    reply = await gateway.post("/v1/responses", json=ASK)
    response = Response.model_validate(reply.json())
    [call] = response.output
    assert call.type == "function_call" and call.call_id == "call_9"
    assert (call.name, call.arguments) == ("f", '{"a":1}')


async def test_streamed_tool_calls_and_reasoning_are_items_of_their_own(gateway, upstream):
    def tool_delta(arguments: str, **first: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, "function": {"arguments": arguments}, **first}]}

    upstream.answer = lambda _: chat_stream(
        chunk({"reasoning_content": "Think."}),
        chunk({"content": "Calling."}),
        chunk(tool_delta("", id="call_1", type="function", function={"name": "f"})),
        chunk(tool_delta('{"a":')),
        chunk(tool_delta("1}")),
        chunk({}, "tool_calls"),
    )
    events = await raw_events(gateway, ASK)
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["reasoning", "message", "function_call"]
    [arguments_done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert arguments_done["arguments"] == '{"a":1}' and arguments_done["name"] == "f"
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Calling."
    assert final.output[2].call_id == "call_1"  # type: ignore[union-attr]


async def test_an_answer_cut_at_the_token_limit_is_incomplete(gateway, upstream):
    upstream.answer = lambda _: chat_stream(chunk({"content": "Pa"}, "length"))
    events = await raw_events(gateway, {**ASK, "max_output_tokens": 1})
    assert events[-1]["type"] == "response.incomplete"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output[0].status == "incomplete"  # type: ignore[union-attr]


async def test_an_engine_that_stops_mid_answer_raises_in_the_sdk(gateway, upstream, sdk):
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[override]
            yield b'data: {"choices":[{"index":0,"delta":{"content":"Pa"}}]}\n\n'
            raise httpx.ReadError("engine died")

    upstream.answer = lambda _: httpx.Response(
        200, stream=Broken(), headers={"content-type": "text/event-stream"}
    )
    stream = await sdk.responses.create(**ASK, stream=True)
    with pytest.raises(openai.APIError, match="engine stopped"):
        async for _ in stream:
            pass
    metrics = (await gateway.get("/metrics")).text
    assert 'tunegate_requests_in_flight{engine="llama.cpp",model="base-gguf"} 0.0' in metrics
    assert 'tunegate_requests_total{engine="llama.cpp",model="base-gguf",status="503"}' in metrics


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**ASK, "input": [{"type": "input_file", "file_id": "f"}]}, "input.[0].type"),
        ({**ASK, "input": [{"role": "wizard", "content": "x"}]}, "input.[0].role"),
        ({**ASK, "tools": [{"type": "web_search"}]}, "tools.[0].type"),
        ({**ASK, "input": [{"type": "item_reference", "id": "msg_1"}]}, "input.[0]"),
        ({**ASK, "max_output_tokens": 10**6}, "max_output_tokens"),
        ({**ASK, "model": "base", "max_output_tokens": 10**6}, "max_output_tokens"),
        ({**ASK, "temperature": 3}, "temperature"),
        ({"model": "base-gguf"}, "input"),
    ],
)
async def test_what_cannot_be_answered_is_400_with_its_param(gateway, upstream, body, param):
    reply = await gateway.post("/v1/responses", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert not upstream.seen


async def test_engine_errors_name_the_responses_parameter(gateway, upstream):
    error = {"error": {"message": "'max_tokens' is too large", "param": "max_tokens"}}
    upstream.answer = lambda _: httpx.Response(400, json=error)
    reply = await gateway.post("/v1/responses", json=ASK)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "max_output_tokens"
    assert "'max_output_tokens'" in reply.json()["error"]["message"]


async def test_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.responses.create(model="nope", input="Hi")
    assert caught.value.code == "model_not_found"
