"""Dataset checks and cleaning for chat fine-tuning, before anything is trained.

The format checks and their codes are those of OpenAI's cookbook ("Data
preparation and analysis for chat model fine-tuning"), each reported with the
line it was found on. On top of them: invalid UTF-8 and JSON, a minimum
number of examples, exact duplicates (removed and counted), a consistent use
of the system role, and examples longer than the model's context.

Pure Python (plus the ``tokenizers`` library for lengths): the gateway runs it
when a job is created; the trainer reads the cleaned result.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROLES = frozenset({"system", "user", "assistant", "tool", "function", "developer"})
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight", "refusal"}
)
EXAMPLE_KEYS = frozenset({"messages", "tools", "functions", "parallel_tool_calls"})
# Per message: role and separators of a chat template (ChatML: about 4 tokens).
_TEMPLATE_TOKENS_PER_MESSAGE = 5


@dataclass(frozen=True)
class Problem:
    code: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message} ({self.code})"


@dataclass
class CheckedDataset:
    examples: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates_removed: int = 0
    lines_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_summary(self, limit: int = 5) -> str:
        shown = "; ".join(str(p) for p in self.errors[:limit])
        more = len(self.errors) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class DatasetLimits:
    min_examples: int = 5
    recommended_examples: int = 10
    max_tokens: int = 2048


def check_dataset(
    raw: bytes, limits: DatasetLimits, count_tokens: Callable[[str], int] | None = None
) -> CheckedDataset:
    result = CheckedDataset()
    seen: set[str] = set()
    for number, line in read_lines(raw, result):
        example = parse_line(line, number, result.errors)
        if example is None or not _check_example(example, number, result.errors):
            continue
        key = json.dumps(example["messages"], sort_keys=True, ensure_ascii=False)
        if key in seen:
            result.duplicates_removed += 1
            continue
        seen.add(key)
        if count_tokens is not None:
            length = estimate_tokens(example["messages"], count_tokens)
            if not fits(length, limits, number, result.errors):
                continue
        example["_line"] = number
        result.examples.append(example)
    if result.duplicates_removed:
        result.warnings.append(f"Removed {result.duplicates_removed} exact duplicate example(s).")
    check_counts(result, limits)
    _check_system_consistency(result)
    return result


def read_lines(raw: bytes, result: CheckedDataset) -> list[tuple[int, str]]:
    """The file's non-blank lines with their numbers; none, and an error, if it is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        result.errors.append(Problem("invalid_utf8", line, "the file is not valid UTF-8"))
        return []
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    result.lines_read = len(numbered)
    return numbered


def fits(length: int, limits: DatasetLimits, number: int, errors: list[Problem]) -> bool:
    if length <= limits.max_tokens:
        return True
    errors.append(
        Problem(
            "example_too_long",
            number,
            f"about {length} tokens, longer than the context of {limits.max_tokens}",
        )
    )
    return False


def estimate_tokens(messages: list[dict[str, Any]], count_tokens: Callable[[str], int]) -> int:
    return sum(
        _TEMPLATE_TOKENS_PER_MESSAGE + count_tokens(content_text(m.get("content")))
        for m in messages
    )


def split_for_validation(
    examples: list[dict[str, Any]], seed: int, min_examples: int = 50
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out 10% (5 to 100 examples) once there are at least ``min_examples``."""
    if len(examples) < min_examples:
        return examples, []
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    held_out = min(100, max(5, len(examples) // 10))
    return shuffled[held_out:], shuffled[:held_out]


def to_jsonl(examples: list[dict[str, Any]]) -> bytes:
    lines = [
        json.dumps({k: v for k, v in e.items() if not k.startswith("_")}, ensure_ascii=False)
        for e in examples
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


# --- the checks ---------------------------------------------------------------
def parse_line(line: str, number: int, errors: list[Problem]) -> dict[str, Any] | None:
    try:
        example = json.loads(line)
    except ValueError as exc:
        errors.append(Problem("invalid_json", number, f"not valid JSON ({exc.msg})"))
        return None
    if not isinstance(example, dict):
        errors.append(Problem("data_type", number, "each line must be a JSON object"))
        return None
    return example


def _check_example(example: dict[str, Any], number: int, errors: list[Problem]) -> bool:
    before = len(errors)
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        errors.append(Problem("missing_messages_list", number, "no non-empty 'messages' list"))
        return False
    unknown = sorted(set(example) - EXAMPLE_KEYS)
    if unknown:
        errors.append(Problem("data_type", number, f"unrecognised keys {unknown}"))
    check_messages(messages, number, errors)
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append(Problem("example_missing_assistant_message", number, "no assistant message"))
    return len(errors) == before


def check_messages(
    messages: list[Any], number: int, errors: list[Problem], where: str = "messages"
) -> None:
    """The cookbook's per-message checks: keys, roles, text content."""
    for index, message in enumerate(messages):
        place = f"{where}[{index}]"
        if not isinstance(message, dict):
            errors.append(Problem("data_type", number, f"{place} is not an object"))
            continue
        if "role" not in message or "content" not in message:
            missing = "role" if "role" not in message else "content"
            errors.append(Problem("message_missing_key", number, f"{place} has no '{missing}'"))
        extra = sorted(set(message) - MESSAGE_KEYS)
        if extra:
            errors.append(Problem("message_unrecognized_key", number, f"{place} has keys {extra}"))
        if "role" in message and message["role"] not in ROLES:
            errors.append(
                Problem("unrecognized_role", number, f"{place} has role {message['role']!r}")
            )
        content = message.get("content")
        if (
            "content" in message
            and not message.get("function_call")
            and not message.get("tool_calls")
        ):
            if not content_text(content).strip():
                errors.append(Problem("missing_content", number, f"{place} has no text content"))


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def check_counts(result: CheckedDataset, limits: DatasetLimits) -> None:
    count = len(result.examples)
    if not result.errors and count < limits.min_examples:
        result.errors.append(
            Problem(
                "too_few_examples",
                0,
                f"{count} usable example(s); at least {limits.min_examples} are needed",
            )
        )
    elif count < limits.recommended_examples and not result.errors:
        result.warnings.append(
            f"Only {count} examples; {limits.recommended_examples} or more give steadier results."
        )


def _check_system_consistency(result: CheckedDataset) -> None:
    """Mixing examples with and without a system message confuses the model."""
    with_system = [e["_line"] for e in result.examples if e["messages"][0].get("role") == "system"]
    if with_system and len(with_system) != len(result.examples):
        without = [e["_line"] for e in result.examples if e["messages"][0].get("role") != "system"]
        result.warnings.append(
            f"{len(with_system)} example(s) start with a system message and {len(without)} do not "
            f"(for example line {without[0]}); use the same system prompt in every example, "
            "or none."
        )
