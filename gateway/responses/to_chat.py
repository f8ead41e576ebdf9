"""A Responses request as a chat completions request, for engines without a Responses route.

Input items become chat messages (``instructions`` first, as a system
message); function tools, ``tool_choice`` and ``text.format`` take their chat
spellings; ``max_output_tokens`` becomes ``max_tokens``. What a chat engine
cannot do (hosted tools, file inputs, references to stored items) is refused
with ``400`` and the parameter that asked for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.responses.protocol import ResponsesRequest

Message = dict[str, Any]

# Chat engines know system, user and assistant; OpenAI's developer role is a system message.
_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})
_LOGPROBS_INCLUDE = "message.output_text.logprobs"

# Engine-side parameter names in errors, as the client spelled them.
CHAT_TO_RESPONSES_PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
}


def chat_body(request: ResponsesRequest, engine: str) -> dict[str, Any]:
    """The chat completions body that asks ``engine`` what ``request`` asks."""
    messages: list[Message] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    messages += _messages(request.input, engine)
    body: dict[str, Any] = {**(request.model_extra or {})}  # engine extras pass through
    body.update(model=request.model, messages=messages, stream=bool(request.stream))
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    copied = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "user": request.user or request.safety_identifier,
    }
    body.update({k: v for k, v in copied.items() if v is not None})
    if request.tools:
        body["tools"] = [_tool(t, i, engine) for i, t in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice, engine)
    response_format = _response_format((request.text or {}).get("format"))
    if response_format is not None:
        body["response_format"] = response_format
    if request.top_logprobs or _LOGPROBS_INCLUDE in (request.include or ()):
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs or 0
    return body


def _messages(items: str | list[dict[str, Any]], engine: str) -> list[Message]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[Message] = []
    for index, item in enumerate(items):
        kind = item.get("type", "message")
        translate = _ITEM_TRANSLATIONS.get(kind)
        if translate is None:
            raise _unsupported(f"input.[{index}].type", f"input items of type '{kind}'", engine)
        translate(item, index, messages, engine)
    if not messages:
        raise InvalidRequestError("'input' has no message to answer.", param="input")
    return messages


def _message(item: dict[str, Any], index: int, messages: list[Message], engine: str) -> None:
    role = _CHAT_ROLES.get(item.get("role", ""))
    if role is None:
        raise InvalidRequestError(
            f"Invalid value for 'input.[{index}].role': expected one of {', '.join(_CHAT_ROLES)}.",
            param=f"input.[{index}].role",
            code="invalid_value",
        )
    content = item.get("content")
    if isinstance(content, list):
        content = _content_parts(content, f"input.[{index}].content", engine)
    elif not isinstance(content, str):
        raise InvalidRequestError(
            f"'input.[{index}].content' must be a string or a list of content parts.",
            param=f"input.[{index}].content",
            code="invalid_value",
        )
    messages.append({"role": role, "content": content})


def _content_parts(parts: list[Any], param: str, engine: str) -> str | list[dict[str, Any]]:
    """Text parts join into one string (every chat template takes that); images stay parts."""
    translated: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text", part.get("refusal")), str):
            translated.append({"type": "text", "text": part.get("text", part.get("refusal"))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"], "detail": part.get("detail") or "auto"}
            translated.append({"type": "image_url", "image_url": image})
        else:
            raise _unsupported(f"{param}.[{index}].type", f"content parts of type '{kind}'", engine)
    if all(p["type"] == "text" for p in translated):
        return "".join(p["text"] for p in translated)
    return translated


def _function_call(item: dict[str, Any], index: int, messages: list[Message], _: str) -> None:
    call = {
        "id": _required_text(item, "call_id", index),
        "type": "function",
        "function": {
            "name": _required_text(item, "name", index),
            "arguments": _required_text(item, "arguments", index),
        },
    }
    previous = messages[-1] if messages else None
    if previous and previous["role"] == "assistant" and "tool_calls" in previous:
        previous["tool_calls"].append(call)  # parallel calls are one assistant turn
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _function_call_output(
    item: dict[str, Any], index: int, messages: list[Message], e: str
) -> None:
    output = item.get("output")
    if isinstance(output, list):
        output = _content_parts(output, f"input.[{index}].output", e)
    if not isinstance(output, str):
        raise InvalidRequestError(
            f"'input.[{index}].output' must be a string.",
            param=f"input.[{index}].output",
            code="invalid_value",
        )
    call_id = _required_text(item, "call_id", index)
    messages.append({"role": "tool", "tool_call_id": call_id, "content": output})


def _reasoning(item: dict[str, Any], index: int, messages: list[Message], engine: str) -> None:
    """Earlier reasoning is not part of a chat prompt: chat templates drop it too."""


def _item_reference(item: dict[str, Any], index: int, messages: list[Message], _: str) -> None:
    raise InvalidRequestError(
        "Items are not stored on this gateway, so 'item_reference' cannot refer to one; "
        "send the item itself.",
        param=f"input.[{index}]",
        code="unsupported_parameter",
    )


_ITEM_TRANSLATIONS: dict[str, Callable[[dict[str, Any], int, list[Message], str], None]] = {
    "message": _message,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
    "reasoning": _reasoning,
    "item_reference": _item_reference,
}


def _tool(tool: dict[str, Any], index: int, engine: str) -> dict[str, Any]:
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        kind = tool.get("type")
        raise _unsupported(f"tools.[{index}].type", f"tools of type '{kind}'", engine)
    keys = ("name", "description", "parameters", "strict")
    return {"type": "function", "function": {k: tool[k] for k in keys if k in tool}}


def _tool_choice(choice: str | dict[str, Any], engine: str) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _unsupported("tool_choice", f"tool_choice values of type '{choice.get('type')}'", engine)


def _response_format(text_format: Any) -> dict[str, Any] | None:
    if not isinstance(text_format, dict) or text_format.get("type") in (None, "text"):
        return None
    if text_format.get("type") == "json_schema":
        keys = ("name", "schema", "description", "strict")
        schema = {k: text_format[k] for k in keys if k in text_format}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": text_format["type"]}


def _required_text(item: dict[str, Any], key: str, index: int) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequestError(
            f"Missing required parameter: 'input.[{index}].{key}'.",
            param=f"input.[{index}].{key}",
            code="missing_required_parameter",
        )
    return value


def _unsupported(param: str, what: str, engine: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Models served by {engine} take no {what} here: the gateway answers the Responses "
        "API for them through their chat API, which has messages, function tools and "
        "function calls only.",
        param=param,
        code="unsupported_value",
    )
