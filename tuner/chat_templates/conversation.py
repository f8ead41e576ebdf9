"""An OpenAI-format chat example as a chat template takes it.

- legacy ``functions`` become ``tools``, an assistant's ``function_call`` a one-call
  ``tool_calls``, and a ``function`` message a ``tool`` message answering that call;
- text content parts are joined with newlines (as vLLM does for templates that
  take a string);
- tool-call arguments, a JSON string in OpenAI's format, become the object
  templates expect (as vLLM passes them);
- ``weight`` and ``refusal`` are left out: they are the trainer's, not the template's.
"""

from __future__ import annotations

import json
from typing import Any

_DROPPED_KEYS = frozenset({"weight", "refusal", "function_call"})


def legacy_call_id(number: int) -> str:
    # Nine letters and digits: what the strictest templates (Mistral's) demand of an id.
    return f"call{number:05d}"


def joined_text(content: Any) -> Any:
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part
        )
    return content


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except ValueError:
            return value  # the checks refuse it; rendering leaves it as it came
    return value


def _tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        function = dict(call.get("function") or {})
        function["arguments"] = _arguments(function.get("arguments"))
        out.append({**call, "function": function})
    return out


def template_tools(example: dict[str, Any]) -> list[dict[str, Any]] | None:
    if example.get("tools"):
        return list(example["tools"])
    if example.get("functions"):
        return [{"type": "function", "function": f} for f in example["functions"]]
    return None


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    legacy_calls = 0
    for message in messages:
        rendered = {k: v for k, v in message.items() if k not in _DROPPED_KEYS}
        if "content" in rendered:
            rendered["content"] = joined_text(rendered["content"])
        if message.get("tool_calls"):
            rendered["tool_calls"] = _tool_calls(message["tool_calls"])
        elif message.get("function_call"):
            legacy_calls += 1
            call = {"id": legacy_call_id(legacy_calls), "type": "function"}
            rendered["tool_calls"] = _tool_calls([{**call, "function": message["function_call"]}])
        if message.get("role") == "function":
            rendered["role"] = "tool"
            rendered["tool_call_id"] = legacy_call_id(legacy_calls)
        out.append(rendered)
    return out
