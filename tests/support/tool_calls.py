"""Scoring tool calls on a held-out set: the e2e test and the benchmark share it."""

from __future__ import annotations

import json
from pathlib import Path

import openai

DATA = Path(__file__).resolve().parents[1] / "data"
TRAINING_FILE = DATA / "tool_calls.jsonl"
HELD_OUT = [
    json.loads(line) for line in (DATA / "tool_calls_held_out.jsonl").read_text().splitlines()
]
# The trained behaviour is robust, but a 135M model may miss a city now and then.
MIN_RIGHT = 4


def _chat_args(case: dict) -> dict:
    return {
        "messages": case["messages"],
        "tools": case["tools"],
        "max_tokens": 64,
        "temperature": 0,
    }


def right_call(name: str | None, arguments: str | None, case: dict) -> bool:
    """The expected function, with arguments that are a JSON string of the expected values."""
    if name != case["expected"]["name"] or not isinstance(arguments, str):
        return False
    try:
        return json.loads(arguments) == case["expected"]["arguments"]
    except ValueError:
        return False


def chat_calls(client: openai.OpenAI, model: str) -> list[tuple[str | None, bool]]:
    """(finish_reason, right) for each held-out prompt, not streamed."""
    results = []
    for case in HELD_OUT:
        choice = client.chat.completions.create(model=model, **_chat_args(case)).choices[0]
        calls = choice.message.tool_calls or []
        right = len(calls) == 1 and right_call(
            calls[0].function.name, calls[0].function.arguments, case
        )
        if calls:
            assert calls[0].type == "function" and calls[0].id
        results.append((choice.finish_reason, right))
    return results


def streamed_calls(client: openai.OpenAI, model: str) -> list[tuple[str | None, bool]]:
    """The same, streamed: the call is put together from its deltas, as SDK users do."""
    results = []
    for case in HELD_OUT:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(model=model, stream=True, **_chat_args(case)):
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
        right = len(calls) == 1 and right_call(calls[0]["name"], calls[0]["arguments"], case)
        results.append((finish, right))
    return results


def accuracy(results: list[tuple[str | None, bool]]) -> int:
    return sum(right for _, right in results)


def report(what: str, model: str, results: list[tuple[str | None, bool]]) -> None:
    print(f"\ntool-call accuracy, {what} ({model}): {accuracy(results)}/{len(results)}")
