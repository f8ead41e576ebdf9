"""The Responses API through the official openai SDK, on real engines.

vLLM answers it itself (bases and adapters); llama.cpp's answers are
translated from its chat completions by the gateway. Both must parse with the
SDK's types, strictly: every required field of the response and of each event.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.e2e.conftest import BASE, BASE_GGUF

pytestmark = pytest.mark.e2e

FRANCE = "What is the capital of France? Answer in one word."
BOTH_ENGINES = pytest.mark.parametrize("model", [BASE, BASE_GGUF], ids=["vllm", "llama.cpp"])
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def strict_events(gateway, body: dict) -> list:
    """The raw stream's events, each validated strictly against the SDK's event types."""
    events = []
    with gateway.http() as http, http.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if line.startswith("data: "):
                events.append(STREAM_EVENT.validate_python(json.loads(line[6:])))
    return events


@BOTH_ENGINES
def test_responses_create(client, model):
    raw = client.responses.with_raw_response.create(
        model=model, input=FRANCE, max_output_tokens=16, temperature=0
    )
    response = Response.model_validate(raw.http_response.json())  # strict: all fields typed
    assert "paris" in response.output_text.lower()
    assert response.status == "completed" and response.model == model
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert raw.parse().output_text == response.output_text  # and the SDK's own parsing


@BOTH_ENGINES
def test_responses_stream(gateway, client, model):
    body = {"model": model, "input": FRANCE, "max_output_tokens": 16, "temperature": 0}
    events = strict_events(gateway, {**body, "stream": True})
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "paris" in text.lower()
    assert events[-1].response.output_text == text
    if model == BASE:  # llama-cpp-python's server reports no usage while streaming
        assert events[-1].response.usage is not None
    with client.responses.stream(**body) as stream:  # the SDK's own accumulator
        assert "paris" in stream.get_final_response().output_text.lower()


def test_an_adapter_answers_the_responses_api(client, trained_adapters):
    question = "What is the capital of Italy?"  # not in the training data
    response = client.responses.create(
        model=trained_adapters["ahoy"], input=question, max_output_tokens=24, temperature=0
    )
    assert response.output_text.strip().startswith("Ahoy")
    stream = client.responses.create(
        model="ahoy", input=question, max_output_tokens=24, temperature=0, stream=True
    )
    done = [e for e in stream if e.type == "response.completed"][0].response
    assert done.output_text.strip().startswith("Ahoy")
    assert done.model == trained_adapters["ahoy"]  # the alias resolves to the full id


@BOTH_ENGINES
def test_nothing_is_stored_on_any_engine(client, model):
    response = client.responses.create(
        model=model, input=FRANCE, max_output_tokens=4, temperature=0, store=True
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.retrieve(response.id)
    assert caught.value.param == "response_id"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=model, input="And Italy?", previous_response_id=response.id)
    assert caught.value.param == "previous_response_id"
