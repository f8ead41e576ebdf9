"""Chat examples as training rows for TRL: the loss covers what the assistant says."""

from __future__ import annotations

from typing import Any


def to_training_rows(example: dict[str, Any]) -> list[dict[str, Any]]:
    """One prompt/completion pair per assistant message, so that the loss covers every
    assistant turn (each with the conversation before it) and nothing else. A message
    with ``"weight": 0`` is context only, as in OpenAI's format."""
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in example["messages"]]
    return [
        {"prompt": messages[:i], "completion": [messages[i]]}
        for i, original in enumerate(example["messages"])
        if original.get("role") == "assistant" and original.get("weight", 1) != 0
    ]
