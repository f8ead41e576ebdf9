"""A function-calling fine-tune of the embedded model, end to end through the openai SDK.

The training file is in OpenAI's documented format (``tools`` beside
``messages``, assistant turns with ``tool_calls`` and no content). It trains
once, with "auto" hyperparameters, with tunegate's tool template; the adapter
then answers held-out prompts with structured tool calls on vLLM (chat
completions, streamed or not, and the Responses API), and so does its merge on
llama.cpp. The accuracies printed here are the rows of docs/benchmarks.md.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.conftest import BASE, BASE_GGUF
from tests.e2e.test_fine_tuning import upload, wait_for
from tests.e2e.test_merges import merge, wait_merge
from tests.support.tool_calls import (
    HELD_OUT,
    MIN_RIGHT,
    TRAINING_FILE,
    accuracy,
    chat_calls,
    report,
    right_call,
    streamed_calls,
)

# Green on the real engines, but its training (28 examples that each carry the tools'
# schemas, "auto": 4 epochs) takes about 10 minutes on two cores: `make test-long`.
pytestmark = [pytest.mark.e2e, pytest.mark.long]


def assert_tool_calls(results: list[tuple[str | None, bool]]) -> None:
    assert accuracy(results) >= MIN_RIGHT, results
    assert all(finish == "tool_calls" for finish, right in results if right), results


@pytest.fixture(scope="module")
def tool_adapter(client: openai.OpenAI) -> str:
    """One training for the whole module, with "auto" hyperparameters."""
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=upload(client, TRAINING_FILE), suffix="weathertools"
    )
    job = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    print(
        f"\ntool-call fine-tune: {job.hyperparameters.model_dump()} in "
        f"{job.finished_at - job.created_at} s, {job.trained_tokens} trained tokens"
    )
    return job.fine_tuned_model


@pytest.fixture(scope="module")
def merged_tool_model(gateway, tool_adapter: str) -> str:
    with gateway.http() as http:
        state = wait_merge(http, merge(http, tool_adapter, "q8_0")["id"])
    assert state["status"] == "succeeded", state
    return state["model"]


def test_the_base_seldom_calls_the_tools(client):
    """The baseline of the benchmark: the untrained base, on both engines."""
    for model in (BASE, BASE_GGUF):
        results = chat_calls(client, model)
        report("base", model, results)
        assert accuracy(results) < MIN_RIGHT


def test_the_adapter_answers_with_tool_calls(client, tool_adapter):
    results = chat_calls(client, tool_adapter)
    report("adapter on vLLM", tool_adapter, results)
    assert_tool_calls(results)


def test_the_adapter_streams_tool_calls(client, tool_adapter):
    results = streamed_calls(client, tool_adapter)
    report("adapter on vLLM, streamed", tool_adapter, results)
    assert_tool_calls(results)


def test_the_merged_model_on_llamacpp_answers_with_tool_calls(client, gateway, merged_tool_model):
    from tuner.chat_templates.base_files import gguf_template

    template, _ = gguf_template(gateway.data_root / "merged" / f"{merged_tool_model}.gguf")
    assert "<tool_call>" in template  # the merge carries the template it was trained with
    results = chat_calls(client, merged_tool_model)
    report("merged q8_0 GGUF on llama.cpp", merged_tool_model, results)
    assert_tool_calls(results)
    streamed = streamed_calls(client, merged_tool_model)
    report("merged q8_0 GGUF on llama.cpp, streamed", merged_tool_model, streamed)
    assert_tool_calls(streamed)


def _response_tools(case: dict) -> list[dict]:
    return [{"type": "function", **tool["function"]} for tool in case["tools"]]


def test_the_responses_api_returns_function_call_items_and_takes_their_output(client, tool_adapter):
    right = 0
    for case in HELD_OUT:
        response = client.responses.create(
            model=tool_adapter,
            input=case["messages"][0]["content"],
            tools=_response_tools(case),
            max_output_tokens=48,
            temperature=0,
        )
        calls = [item for item in response.output if item.type == "function_call"]
        right += len(calls) == 1 and right_call(calls[0].name, calls[0].arguments, case)
    print(f"\ntool-call accuracy, adapter via the Responses API: {right}/{len(HELD_OUT)}")
    assert right >= MIN_RIGHT
    # The call and its output go back in: the model answers the conversation.
    case = HELD_OUT[0]
    call = calls[0] if calls else None
    follow_up = client.responses.create(
        model=tool_adapter,
        input=[
            {"role": "user", "content": case["messages"][0]["content"]},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": case["expected"]["name"],
                "arguments": json.dumps(case["expected"]["arguments"]),
            },
            {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 12}'},
        ],
        tools=_response_tools(case),
        max_output_tokens=24,
        temperature=0,
    )
    assert follow_up.status == "completed" and follow_up.output, (call, follow_up)
