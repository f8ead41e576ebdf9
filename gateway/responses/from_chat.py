"""A whole chat completion as a whole ``response`` object."""

from __future__ import annotations

import time
from typing import Any

from gateway.responses.objects import (
    finish_status,
    finished,
    function_call_item,
    message_item,
    new_id,
    output_text,
    reasoning_item,
    reasoning_of,
    response_object,
    usage_from_chat,
)
from gateway.responses.protocol import ResponsesRequest


def response_from_chat(
    request: ResponsesRequest, chat: dict[str, Any], response_id: str, model: str
) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    item_status = "incomplete" if finish_status(finish_reason)[0] == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        output.append(reasoning_item(new_id("rs"), "completed", reasoning))
    text = message.get("content")
    tool_calls = message.get("tool_calls") or []
    if text or not (tool_calls or reasoning):  # an empty answer is still one message
        logprobs = (choice.get("logprobs") or {}).get("content")
        part = output_text(text or "", logprobs)
        output.append(message_item(new_id("msg"), item_status, [part]))
    for call in tool_calls:
        function = call.get("function") or {}
        output.append(
            function_call_item(
                new_id("fc"),
                "completed",
                call.get("id") or new_id("call"),
                function.get("name") or "",
                function.get("arguments") or "",
            )
        )
    created_at = int(chat.get("created") or time.time())
    response = response_object(request, response_id, created_at, model)
    return finished(response, output, finish_reason, usage_from_chat(chat.get("usage")))
