"""Checks of function calling in chat examples, in OpenAI's fine-tuning format.

An example may give ``tools`` (or the legacy ``functions``) beside its
``messages`` and ``parallel_tool_calls``; an assistant message may call tools
(``tool_calls``, or the legacy ``function_call``) with or without ``content``;
a ``tool`` message answers a call by its ``tool_call_id`` (a legacy
``function`` message by its ``name``). Each problem is reported with its line
and a code in the style of the cookbook's (``tool_call_missing_key``...).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tuner.problems import Problem

# OpenAI's rule for function names.
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_tools(example: dict[str, Any], number: int, errors: list[Problem]) -> set[str] | None:
    """The names of the functions an example declares (None: it declares none)."""
    if "tools" in example and "functions" in example:
        errors.append(Problem("data_type", number, "give 'tools' or 'functions', not both"))
        return None
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        errors.append(Problem("data_type", number, "'parallel_tool_calls' must be true or false"))
    key = "tools" if "tools" in example else "functions" if "functions" in example else None
    if key is None:
        return None
    declared = example[key]
    if not isinstance(declared, list):
        errors.append(Problem("tools_data_type", number, f"'{key}' must be a list"))
        return None
    names: set[str] = set()
    for index, tool in enumerate(declared):
        place = f"{key}[{index}]"
        function = tool
        if key == "tools":
            if not isinstance(tool, dict):
                errors.append(Problem("tools_data_type", number, f"{place} is not an object"))
                continue
            if tool.get("type") != "function":
                errors.append(
                    Problem(
                        "tool_unrecognized_type",
                        number,
                        f"{place} has type {tool.get('type')!r}; only 'function' tools train",
                    )
                )
                continue
            function = tool.get("function")
            place += ".function"
        name = _function_name(function, place, number, errors, "tool_missing_key")
        if name is None:
            continue
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            errors.append(
                Problem("tool_invalid_parameters", number, f"{place}.parameters is not an object")
            )
        if name in names:
            errors.append(Problem("duplicate_tool_name", number, f"{place} repeats {name!r}"))
        names.add(name)
    return names


def _function_name(
    function: Any, place: str, number: int, errors: list[Problem], code: str
) -> str | None:
    if not isinstance(function, dict) or "name" not in function:
        errors.append(Problem(code, number, f"{place} has no 'name'"))
        return None
    name = function["name"]
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        errors.append(
            Problem(
                "invalid_function_name",
                number,
                f"{place}.name {name!r} must be 1 to 64 letters, digits, '_' or '-'",
            )
        )
        return None
    return name


def _check_arguments(value: Any, place: str, number: int, errors: list[Problem]) -> None:
    """Arguments are a JSON string that parses to an object, as OpenAI sends them."""
    problem = None
    if not isinstance(value, str):
        problem = "is not a string (arguments are a JSON-encoded string)"
    else:
        try:
            parsed = json.loads(value)
        except ValueError:
            problem = "is not valid JSON"
        else:
            if not isinstance(parsed, dict):
                problem = "is not a JSON object"
    if problem:
        errors.append(Problem("tool_call_invalid_arguments", number, f"{place} {problem}"))


class CallLedger:
    """The calls an example's assistant turns make, and the answers its tool turns give."""

    def __init__(self, declared: set[str] | None, parallel: bool) -> None:
        self.declared = declared
        self.parallel = parallel
        self.open_ids: set[str] = set()
        self.seen_ids: set[str] = set()
        self.legacy_open = False

    def check_message(
        self, message: dict[str, Any], place: str, number: int, errors: list[Problem]
    ) -> None:
        role = message.get("role")
        if "tool_calls" in message or "function_call" in message:
            if role != "assistant":
                errors.append(
                    Problem("tool_call_wrong_role", number, f"{place} calls tools as {role!r}")
                )
                return
        if "tool_calls" in message and message["tool_calls"] is not None:
            self._check_tool_calls(message["tool_calls"], place, number, errors)
        if message.get("function_call") is not None:
            self._check_function_call(message["function_call"], place, number, errors)
        if role == "tool":
            self._check_tool_answer(message, place, number, errors)
        if role == "function":
            if not isinstance(message.get("name"), str):
                errors.append(Problem("message_missing_key", number, f"{place} has no 'name'"))
            if not self.legacy_open:
                errors.append(
                    Problem("tool_call_id_unknown", number, f"{place} answers no function_call")
                )
            self.legacy_open = False

    def _check_tool_calls(self, calls: Any, place: str, number: int, errors: list[Problem]) -> None:
        if not isinstance(calls, list) or not calls:
            errors.append(
                Problem("data_type", number, f"{place}.tool_calls must be a non-empty list")
            )
            return
        if len(calls) > 1 and not self.parallel:
            errors.append(
                Problem(
                    "parallel_tool_calls_disabled",
                    number,
                    f"{place} makes {len(calls)} calls but parallel_tool_calls is false",
                )
            )
        for index, call in enumerate(calls):
            where = f"{place}.tool_calls[{index}]"
            if not isinstance(call, dict):
                errors.append(Problem("data_type", number, f"{where} is not an object"))
                continue
            missing = [k for k in ("id", "type", "function") if k not in call]
            if missing:
                errors.append(
                    Problem("tool_call_missing_key", number, f"{where} has no '{missing[0]}'")
                )
                continue
            if call["type"] != "function":
                errors.append(
                    Problem(
                        "tool_call_unrecognized_type",
                        number,
                        f"{where} has type {call['type']!r}; only 'function' calls train",
                    )
                )
            self._check_id(call["id"], where, number, errors)
            self._check_function(call["function"], f"{where}.function", number, errors)

    def _check_id(self, call_id: Any, where: str, number: int, errors: list[Problem]) -> None:
        if not isinstance(call_id, str) or not call_id:
            errors.append(Problem("tool_call_missing_key", number, f"{where} has no string 'id'"))
        elif call_id in self.seen_ids:
            errors.append(
                Problem("duplicate_tool_call_id", number, f"{where} repeats id {call_id!r}")
            )
        else:
            self.seen_ids.add(call_id)
            self.open_ids.add(call_id)

    def _check_function(
        self, function: Any, where: str, number: int, errors: list[Problem]
    ) -> None:
        name = _function_name(function, where, number, errors, "tool_call_missing_key")
        if name is None:
            return
        if "arguments" not in function:
            errors.append(Problem("tool_call_missing_key", number, f"{where} has no 'arguments'"))
        else:
            _check_arguments(function["arguments"], f"{where}.arguments", number, errors)
        if self.declared is not None and name not in self.declared:
            errors.append(
                Problem(
                    "tool_call_unknown_function",
                    number,
                    f"{where} calls {name!r}, which the example's tools do not declare",
                )
            )

    def _check_function_call(
        self, call: Any, place: str, number: int, errors: list[Problem]
    ) -> None:
        self._check_function(call, f"{place}.function_call", number, errors)
        self.legacy_open = True

    def _check_tool_answer(
        self, message: dict[str, Any], place: str, number: int, errors: list[Problem]
    ) -> None:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            errors.append(Problem("message_missing_key", number, f"{place} has no 'tool_call_id'"))
        elif call_id not in self.open_ids:
            errors.append(
                Problem(
                    "tool_call_id_unknown",
                    number,
                    f"{place} answers {call_id!r}, which no earlier assistant message called",
                )
            )
        else:
            self.open_ids.discard(call_id)


def uses_tools(example: dict[str, Any]) -> bool:
    return bool(example.get("tools") or example.get("functions")) or any(
        isinstance(m, dict)
        and (m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function"))
        for m in example.get("messages") or []
    )
