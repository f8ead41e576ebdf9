"""Dataset checks and cleaning for chat fine-tuning, before anything is trained.

The format checks and their codes are those of OpenAI's cookbook ("Data
preparation and analysis for chat model fine-tuning"), each reported with the
line it was found on. On top of them: invalid UTF-8 and JSON, a minimum
number of examples, exact duplicates (removed and counted), a consistent use
of the system role, and examples longer than the model's context.

Function calling (``tools``, ``tool_calls``, ``tool`` messages, the legacy
``functions``) is checked by ``tuner.tool_checks``. Given the base's
``TrainingChat`` as its token counter, the check renders and tokenizes every
example exactly as the trainer will, with the template the trainer will use:
what the base cannot train on (a tool call its template cannot express, an
image for a text model) is an error on its line now, never a failed job later.

Pure Python (plus ``jinja2`` and the ``tokenizers`` library): the gateway runs
it when a job is created; the trainer reads the cleaned result.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuner.chat_templates import TemplateError, TrainingChat
from tuner.examples import to_training_rows
from tuner.problems import Problem
from tuner.tool_checks import CallLedger, check_tools, uses_tools

ROLES = frozenset({"system", "user", "assistant", "tool", "function", "developer"})
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight", "refusal"}
)
EXAMPLE_KEYS = frozenset({"messages", "tools", "functions", "parallel_tool_calls"})
# Per message: role and separators of a chat template (ChatML: about 4 tokens).
_TEMPLATE_TOKENS_PER_MESSAGE = 5
# Roles whose message may leave out its content (or give null): an assistant that calls tools.
_CALLING_KEYS = ("tool_calls", "function_call")
# Content parts a text model cannot train on; tunegate's bases are text models.
_MEDIA_PARTS = frozenset({"image_url", "input_audio", "file", "image", "audio"})


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
    """``count_tokens``: a token counter, or the base's ``TrainingChat``, which also renders
    each example with the trainer's template (and then counts the rendered tokens)."""
    result = CheckedDataset()
    seen: set[str] = set()
    chat = count_tokens if isinstance(count_tokens, TrainingChat) else None
    for number, line in read_lines(raw, result):
        example = parse_line(line, number, result.errors)
        if example is None or not _check_example(example, number, result.errors):
            continue
        key = json.dumps(
            {k: example.get(k) for k in sorted(EXAMPLE_KEYS)}, sort_keys=True, ensure_ascii=False
        )
        if key in seen:
            result.duplicates_removed += 1
            continue
        seen.add(key)
        if chat is not None:
            length = rendered_length(example, chat, number, result.errors)
            if length is None or not fits(length, limits, number, result.errors):
                continue
        elif count_tokens is not None:
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
    declared = check_tools(example, number, errors)
    ledger = CallLedger(declared, parallel=example.get("parallel_tool_calls") is not False)
    check_messages(messages, number, errors, ledger=ledger)
    assistants = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not assistants:
        errors.append(Problem("example_missing_assistant_message", number, "no assistant message"))
    elif all(m.get("weight", 1) == 0 for m in assistants):
        errors.append(
            Problem(
                "example_missing_assistant_message",
                number,
                "every assistant message has weight 0: there is nothing to train on",
            )
        )
    return len(errors) == before


def check_messages(
    messages: list[Any],
    number: int,
    errors: list[Problem],
    where: str = "messages",
    ledger: CallLedger | None = None,
) -> None:
    """The cookbook's per-message checks (keys, roles, text content), plus weights, media
    parts and, with a ``ledger``, tool calls and the tool messages that answer them."""
    ledger = ledger or CallLedger(None, parallel=True)
    for index, message in enumerate(messages):
        place = f"{where}[{index}]"
        if not isinstance(message, dict):
            errors.append(Problem("data_type", number, f"{place} is not an object"))
            continue
        calls = any(message.get(key) for key in _CALLING_KEYS)
        if "role" not in message:
            errors.append(Problem("message_missing_key", number, f"{place} has no 'role'"))
        elif "content" not in message and not calls:
            errors.append(Problem("message_missing_key", number, f"{place} has no 'content'"))
        extra = sorted(set(message) - MESSAGE_KEYS)
        if extra:
            errors.append(Problem("message_unrecognized_key", number, f"{place} has keys {extra}"))
        if "role" in message and message["role"] not in ROLES:
            errors.append(
                Problem("unrecognized_role", number, f"{place} has role {message['role']!r}")
            )
        _check_content(message, place, calls, number, errors)
        _check_weight(message, place, number, errors)
        ledger.check_message(message, place, number, errors)


def _check_content(
    message: dict[str, Any], place: str, calls: bool, number: int, errors: list[Problem]
) -> None:
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _MEDIA_PARTS:
                errors.append(
                    Problem(
                        "unsupported_content_type",
                        number,
                        f"{place} has a '{kind}' content part; the base is a text model",
                    )
                )
                return
            if kind != "text" or not isinstance(part.get("text"), str):
                errors.append(
                    Problem("data_type", number, f"{place} has a content part that is not text")
                )
                return
    elif content is not None and not isinstance(content, str):
        errors.append(Problem("data_type", number, f"{place} content is not a string or list"))
        return
    if "content" in message and not calls and not content_text(content).strip():
        errors.append(Problem("missing_content", number, f"{place} has no text content"))


def _check_weight(message: dict[str, Any], place: str, number: int, errors: list[Problem]) -> None:
    """As in OpenAI's format: 0 or 1, on assistant messages only."""
    if "weight" not in message:
        return
    if message.get("role") != "assistant":
        errors.append(Problem("invalid_weight", number, f"{place}: only assistant messages weigh"))
    elif message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
        errors.append(Problem("invalid_weight", number, f"{place} weight must be 0 or 1"))


def rendered_length(
    example: dict[str, Any], chat: TrainingChat, number: int, errors: list[Problem]
) -> int | None:
    """Render and tokenize the example as the trainer will; its token count, or None (and
    an error) when the base's template cannot train it."""
    if uses_tools(example) and not chat.choice.expresses_tools:
        errors.append(
            Problem(
                "tools_not_supported",
                number,
                "the example calls tools, but the base's chat template cannot express tools "
                "and is not ChatML, so tunegate's tool template cannot stand in for it",
            )
        )
        return None
    try:
        text = chat.render_example(example)
        rows = [chat.tokenize_row(row) for row in to_training_rows(example)]
    except TemplateError as exc:
        errors.append(
            Problem("template_error", number, f"the base's chat template cannot render it: {exc}")
        )
        return None
    unshown = _calls_not_rendered(example, text)
    if unshown:
        errors.append(
            Problem(
                "tool_call_not_rendered",
                number,
                f"the base's chat template leaves out the call(s) to {unshown}",
            )
        )
        return None
    if any(1 not in row["completion_mask"] for row in rows):
        errors.append(
            Problem("missing_content", number, "an assistant message renders to no tokens")
        )
        return None
    return chat(text)


def _calls_not_rendered(example: dict[str, Any], text: str) -> list[str]:
    names = [
        (call.get("function") or {}).get("name")
        for m in example["messages"]
        for call in (m.get("tool_calls") or [])
    ] + [(m.get("function_call") or {}).get("name") for m in example["messages"]]
    return sorted({n for n in names if isinstance(n, str) and n not in text})


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
