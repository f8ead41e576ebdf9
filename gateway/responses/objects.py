"""The Responses API's objects, built from a request and a chat completion's parts.

Field names, ids (``resp_``, ``msg_``, ``rs_``, ``fc_``) and statuses are
OpenAI's; the ``response`` object repeats the request's settings as OpenAI's
does, so the openai SDK's types parse it whole.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.responses.protocol import ResponsesRequest

# A chat finish_reason -> the response's status and, when incomplete, why.
_FINISH_STATUS: dict[str | None, tuple[str, str | None]] = {
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}
_COMPLETED: tuple[str, str | None] = ("completed", None)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_object(
    request: ResponsesRequest, response_id: str, created_at: int, model: str
) -> dict[str, Any]:
    """A response in progress, with no output yet; ``model`` is the id that answers."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls,
        "model": model,
        "output": [],
        "parallel_tool_calls": (
            request.parallel_tool_calls if request.parallel_tool_calls is not None else True
        ),
        "previous_response_id": None,
        "reasoning": request.reasoning or {"effort": None, "summary": None},
        "store": False,
        "temperature": request.temperature,
        "text": request.text or {"format": {"type": "text"}},
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": request.tools or [],
        "top_logprobs": request.top_logprobs,
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def finished(
    response: dict[str, Any],
    output: list[dict[str, Any]],
    finish_reason: str | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """``response`` with its output, final status and usage."""
    status, reason = finish_status(finish_reason)
    return {
        **response,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output,
        "usage": usage,
    }


def finish_status(finish_reason: str | None) -> tuple[str, str | None]:
    return _FINISH_STATUS.get(finish_reason, _COMPLETED)


def output_text(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(
    item_id: str, status: str, content: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content or [],
    }


def reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def reasoning_item(item_id: str, status: str, text: str | None = None) -> dict[str, Any]:
    content = [reasoning_text(text)] if text is not None else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def function_call_item(
    item_id: str, status: str, call_id: str, name: str, arguments: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def usage_from_chat(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat's ``prompt_tokens``/``completion_tokens`` as Responses' input and output tokens."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": 0,  # the engines report no cache writes
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)
        },
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def reasoning_of(message_or_delta: dict[str, Any]) -> str | None:
    """The reasoning text: ``reasoning_content`` in llama.cpp, ``reasoning`` in vLLM."""
    text = message_or_delta.get("reasoning_content") or message_or_delta.get("reasoning")
    return text if isinstance(text, str) and text else None
