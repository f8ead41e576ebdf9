"""Which chat template a base trains and serves with, and which tool-call parser reads it.

A base whose own template expresses tools (it renders a probe tool and a probe
call: Qwen2.5, Llama 3.x, Mistral…) keeps it, with the vLLM parser of its
family. A ChatML base whose template cannot (the embedded SmolLM2) gets
tunegate's tool template (``chatml_tools.jinja``), which renders every
conversation without tools exactly as the base's own template does, and the
"hermes" parser. Any other base keeps its own template and trains no tools.

The choice is a pure function of the base's template, so the gateway's file
checks, the trainer, vLLM and llama-server all arrive at the same one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from tuner.chat_templates.jinja_env import TemplateError, render

TOOL_TEMPLATE_NAME = "chatml_tools.jinja"
TOOL_TEMPLATE_PARSER = "hermes"
# The first line of the shipped tool template; replaced by the base's default system prompt.
_DEFAULT_SYSTEM_LINE = "{%- set default_system_message = none %}"

# A marker in a template's source -> the vLLM tool parser of that model family.
FAMILY_PARSERS: tuple[tuple[str, str], ...] = (
    ("[TOOL_CALLS]", "mistral"),
    ("<|python_tag|>", "llama3_json"),
    ("<tool_call>", "hermes"),
)

_PROBE_TOOL = "probe_lookup_7c2f"
_PROBE_VALUE = "probe_value_5b1e"
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": _PROBE_TOOL,
            "description": "Looks a thing up.",
            "parameters": {
                "type": "object",
                "properties": {"thing": {"type": "string"}},
                "required": ["thing"],
            },
        },
    }
]
_PROBE_CALL = [
    {"role": "user", "content": "Look it up."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "a1b2c3d4e",  # nine letters and digits: what Mistral's templates demand
                "type": "function",
                "function": {"name": _PROBE_TOOL, "arguments": {"thing": _PROBE_VALUE}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "a1b2c3d4e", "content": "found"},
    {"role": "assistant", "content": "It is found."},
]
# Conversations without tools on which the tool template must equal the base's own.
_PLAIN_PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Line one\nline {two} ünïcode"},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": " spaced \n"},
    ],
)


@dataclass(frozen=True)
class TemplateChoice:
    template: str  # the Jinja source to train and serve with
    source: Literal["base", "tunegate"]
    tool_parser: str | None  # vLLM's --tool-call-parser; None: tools cannot be trained or served

    @property
    def expresses_tools(self) -> bool:
        return self.tool_parser is not None


def tool_template_source() -> str:
    """The shipped tool template, with no default system prompt."""
    return resources.files(__package__).joinpath(TOOL_TEMPLATE_NAME).read_text(encoding="utf-8")


def tool_template_for(default_system: str | None) -> str:
    shipped = tool_template_source()
    if default_system is None:
        return shipped
    line = "{%- set default_system_message = " + json.dumps(default_system) + " %}"
    return shipped.replace(_DEFAULT_SYSTEM_LINE, line, 1)


def expresses_tools(template: str, special_tokens: dict[str, str] | None = None) -> bool:
    """Both the probe tool's definition and the probe call's argument reach the text."""
    try:
        listed = render(template, _PROBE_CALL[:1], _PROBE_TOOLS, True, special_tokens)
        called = render(template, _PROBE_CALL, _PROBE_TOOLS, False, special_tokens)
    except TemplateError:
        return False
    return _PROBE_TOOL in listed and _PROBE_VALUE in called


def family_parser(template: str) -> str | None:
    return next((parser for marker, parser in FAMILY_PARSERS if marker in template), None)


def chatml_default_system(template: str, special_tokens: dict[str, str] | None) -> str | None:
    """The default system prompt of a ChatML template ("" when it adds none); None when the
    template is not ChatML as tunegate's tool template writes it."""
    user = [{"role": "user", "content": "Hi"}]
    plain = "<|im_start|>user\nHi<|im_end|>\n"
    try:
        text = render(template, user, None, False, special_tokens)
    except TemplateError:
        return None
    if text == plain:
        return ""
    prefix, suffix = "<|im_start|>system\n", "<|im_end|>\n" + plain
    if text.startswith(prefix) and text.endswith(suffix) and len(text) > len(prefix + suffix):
        return text[len(prefix) : -len(suffix)]
    return None


def renders_alike(a: str, b: str, special_tokens: dict[str, str] | None = None) -> bool:
    """Two templates give the same text on every plain probe, with and without the
    generation prompt."""
    try:
        return all(
            render(a, probe, None, prompt, special_tokens)
            == render(b, probe, None, prompt, special_tokens)
            for probe in _PLAIN_PROBES
            for prompt in (False, True)
        )
    except TemplateError:
        return False


def choose_template(
    base_template: str | None,
    special_tokens: dict[str, str] | None = None,
    parser_setting: str | None = None,
) -> TemplateChoice | None:
    """The template and parser for a base with this template (None: the base has none).
    ``parser_setting``, the base's ``tool_call_parser`` setting, wins over the family's."""
    if not base_template:
        return None
    if expresses_tools(base_template, special_tokens):
        parser = parser_setting or family_parser(base_template)
        return TemplateChoice(base_template, "base", parser)
    default_system = chatml_default_system(base_template, special_tokens)
    if default_system is not None:
        candidate = tool_template_for(default_system or None)
        if renders_alike(candidate, base_template, special_tokens):
            return TemplateChoice(candidate, "tunegate", TOOL_TEMPLATE_PARSER)
    return TemplateChoice(base_template, "base", None)
