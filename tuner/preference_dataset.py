"""Data checks and cleaning for preference (DPO) fine-tuning, in OpenAI's format.

One pair per line::

    {"input": {"messages": [...], "tools": [...]},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}

Each problem is reported with its line, as the chat-format checks are, and
with these codes (those shared with the chat format mean the same there):

- ``invalid_utf8``, ``invalid_json``, ``data_type``: the line is not a JSON object
  of known keys;
- ``missing_input``: no ``input`` object with a non-empty ``messages`` list;
- ``message_missing_key``, ``message_unrecognized_key``, ``unrecognized_role``,
  ``missing_content``: the cookbook's checks on the input's messages;
- ``missing_output``: ``preferred_output`` or ``non_preferred_output`` is absent,
  not a list, or an empty list;
- ``multiple_output_messages``: an output holds more than one message;
- ``output_not_assistant``: an output message whose role is not ``assistant``;
- ``empty_output``: an output message without text;
- ``identical_outputs``: the preferred and non-preferred answers are the same;
- ``example_too_long``: the input and the longer answer exceed the context;
- ``too_few_examples``: fewer usable pairs than a job needs.

Exact duplicate pairs are removed and reported as a warning
(``duplicate_pair``), with the lines they repeat, as duplicate chat examples are.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tuner.dataset import (
    MESSAGE_KEYS,
    CheckedDataset,
    DatasetLimits,
    Problem,
    check_counts,
    check_messages,
    content_text,
    estimate_tokens,
    fits,
    parse_line,
    read_lines,
)

PAIR_KEYS = frozenset({"input", "preferred_output", "non_preferred_output"})
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
OUTPUTS = ("preferred_output", "non_preferred_output")
_SHOWN_DUPLICATES = 5


def check_preference_dataset(
    raw: bytes, limits: DatasetLimits, count_tokens: Callable[[str], int] | None = None
) -> CheckedDataset:
    result = CheckedDataset()
    first_line: dict[str, int] = {}  # pair -> the line it was first seen on
    repeats: list[tuple[int, int]] = []
    for number, line in read_lines(raw, result):
        pair = parse_line(line, number, result.errors)
        if pair is None or not _check_pair(pair, number, result.errors):
            continue
        key = json.dumps([pair[k] for k in sorted(PAIR_KEYS)], sort_keys=True, ensure_ascii=False)
        if key in first_line:
            repeats.append((number, first_line[key]))
            continue
        first_line[key] = number
        if count_tokens is not None:
            if not fits(_pair_tokens(pair, count_tokens), limits, number, result.errors):
                continue
        pair["_line"] = number
        result.examples.append(pair)
    if repeats:
        result.duplicates_removed = len(repeats)
        shown = "; ".join(
            f"line {n} repeats line {first}" for n, first in repeats[:_SHOWN_DUPLICATES]
        )
        more = len(repeats) - _SHOWN_DUPLICATES
        result.warnings.append(
            f"Removed {len(repeats)} duplicate pair(s) (duplicate_pair): {shown}"
            + (f"; and {more} more." if more > 0 else ".")
        )
    check_counts(result, limits)
    return result


def prompt_of(pair: dict[str, Any]) -> list[dict[str, Any]]:
    return pair["input"]["messages"]


def preferred_text(pair: dict[str, Any]) -> str:
    return content_text(pair["preferred_output"][0].get("content"))


def _check_pair(pair: dict[str, Any], number: int, errors: list[Problem]) -> bool:
    before = len(errors)
    unknown = sorted(set(pair) - PAIR_KEYS)
    if unknown:
        hint = " (chat examples; a DPO job takes preference pairs)" if "messages" in pair else ""
        errors.append(Problem("data_type", number, f"unrecognised keys {unknown}{hint}"))
    source = pair.get("input")
    messages = source.get("messages") if isinstance(source, dict) else None
    if not isinstance(messages, list) or not messages:
        errors.append(
            Problem("missing_input", number, "no 'input' object with a non-empty 'messages' list")
        )
    else:
        extra = sorted(set(source) - INPUT_KEYS)
        if extra:
            errors.append(Problem("data_type", number, f"'input' has unrecognised keys {extra}"))
        check_messages(messages, number, errors, where="input.messages")
    answers = [_check_output(pair, name, number, errors) for name in OUTPUTS]
    if None not in answers and answers[0] == answers[1]:
        errors.append(
            Problem(
                "identical_outputs",
                number,
                "the preferred and non-preferred answers are the same",
            )
        )
    return len(errors) == before


def _check_output(
    pair: dict[str, Any], name: str, number: int, errors: list[Problem]
) -> str | None:
    """The answer's text, or None after reporting what is wrong with it."""
    output = pair.get(name)
    if not isinstance(output, list) or not output:
        errors.append(Problem("missing_output", number, f"no non-empty '{name}' list"))
        return None
    if len(output) > 1:
        errors.append(
            Problem(
                "multiple_output_messages",
                number,
                f"'{name}' holds {len(output)} messages; it takes one assistant message",
            )
        )
        return None
    message = output[0]
    if not isinstance(message, dict):
        errors.append(Problem("data_type", number, f"{name}[0] is not an object"))
        return None
    if message.get("role") != "assistant":
        errors.append(
            Problem(
                "output_not_assistant",
                number,
                f"{name}[0] has role {message.get('role')!r}; answers are assistant messages",
            )
        )
        return None
    extra = sorted(set(message) - MESSAGE_KEYS)
    if extra:
        errors.append(Problem("message_unrecognized_key", number, f"{name}[0] has keys {extra}"))
        return None
    text = content_text(message.get("content")).strip()
    if not text:
        errors.append(Problem("empty_output", number, f"{name}[0] has no text content"))
        return None
    return text


def _pair_tokens(pair: dict[str, Any], count_tokens: Callable[[str], int]) -> int:
    """The longer of the two sequences the trainer runs: input plus one answer."""
    return max(estimate_tokens([*prompt_of(pair), *pair[name]], count_tokens) for name in OUTPUTS)
