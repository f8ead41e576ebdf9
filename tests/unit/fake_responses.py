"""A fake engine that also serves vLLM's own Responses route, for fast unit tests."""

from __future__ import annotations

import json

import httpx

from tests.unit.fakes import ChunkedStream, FakeUpstream


def vllm_response(model: str, text: str) -> dict[str, object]:
    """A Responses API answer as vLLM's own route gives it (the fields OpenAI requires)."""
    message = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": model,
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [message],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 3,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 1,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 4,
        },
    }


def vllm_response_events(model: str, text: str) -> bytes:
    done = vllm_response(model, text)
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {**done, "output": []}},
        {"type": "response.completed", "sequence_number": 1, "response": done},
    ]
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


class ResponsesUpstream(FakeUpstream):
    """Answers ``/v1/responses`` as vLLM does; every other route as ``FakeUpstream``."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/responses" or self.answer is not None:
            return super().__call__(request)
        self.seen.append(request)
        body = json.loads(request.content)
        if body.get("stream"):
            events = vllm_response_events(body["model"], "Paris")
            return httpx.Response(
                200, stream=ChunkedStream(events), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, json=vllm_response(body["model"], "Paris"))
