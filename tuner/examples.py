"""Chat examples as training rows: the loss covers what the assistant says.

Each row keeps what the chat template renders: the conversation before an
assistant turn (``prompt``), that turn (``completion``, its tool calls
included) and the example's ``tools``, all in the form templates take
(``tuner.chat_templates.conversation``): legacy functions as tools, arguments
as objects, text parts joined.
"""

from __future__ import annotations

from typing import Any

from tuner.chat_templates.conversation import template_messages, template_tools


def to_training_rows(example: dict[str, Any]) -> list[dict[str, Any]]:
    """One prompt/completion pair per assistant message, so that the loss covers every
    assistant turn (each with the conversation before it) and nothing else. A message
    with ``"weight": 0`` is context only, as in OpenAI's format."""
    messages = template_messages(example["messages"])
    tools = template_tools(example)
    return [
        {"prompt": messages[:i], "completion": [messages[i]], "tools": tools}
        for i, original in enumerate(example["messages"])
        if original.get("role") == "assistant" and original.get("weight", 1) != 0
    ]
