"""tunegate's tool template and the choice of template per base (pure Jinja; no model)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tuner.chat_templates import choose_template, render, tool_template_for
from tuner.chat_templates.choice import chatml_default_system, family_parser
from tuner.chat_templates.conversation import template_messages, template_tools

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"
# SmolLM2-135M-Instruct's own template, as its checkpoint ships it.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2.5's template, abridged: it expresses tools itself, Hermes-style.
QWEN_LIKE = (
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}{%- for tool in tools %}"
    "{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}{%- for tc in message.tool_calls %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tc.function.name + \'", "arguments": \' + '
    "(tc.function.arguments | tojson) + '}\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + "
    "'\\n</tool_response><|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
PLAIN_NOT_CHATML = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_the_checkpoint_ships_the_template_these_tests_use():
    shipped = SMOLLM2_DIR / "chat_template.jinja"
    if not shipped.is_file():
        pytest.skip("the embedded checkpoint is not prepared")
    assert shipped.read_text().strip() == SMOLLM2.strip()


def test_smollm2_gets_the_tool_template_with_its_default_system_prompt_and_hermes():
    choice = choose_template(SMOLLM2)
    assert (choice.source, choice.tool_parser) == ("tunegate", "hermes")
    assert chatml_default_system(SMOLLM2, None) == (
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert choice.template == tool_template_for(chatml_default_system(SMOLLM2, None))


@pytest.mark.parametrize(
    ("template", "source", "parser"),
    [
        (QWEN_LIKE, "base", "hermes"),
        (QWEN_LIKE.replace("<tool_call>", "<|python_tag|>"), "base", "llama3_json"),
        (PLAIN_NOT_CHATML, "base", None),
    ],
    ids=["tools-of-its-own", "llama-family", "not-chatml"],
)
def test_other_bases_keep_their_own_template(template, source, parser):
    choice = choose_template(template)
    assert (choice.source, choice.tool_parser, choice.template) == (source, parser, template)


def test_the_parser_setting_wins_for_a_template_with_tools_of_its_own():
    assert choose_template(QWEN_LIKE, parser_setting="qwen3_xml").tool_parser == "qwen3_xml"
    assert family_parser(PLAIN_NOT_CHATML) is None


_TEXTS = [
    "Hi",
    "What is 2+2?",
    "Line one\nline two\n",
    "  padded  ",
    "ünïcödé — ✓ 漢字",
    "{{ not jinja }} {% neither %}",
    "quotes \" and ' and \\ backslash",
    "<tool_call> looks like a call </tool_call>",
    "",
]


def _random_conversation(rng: random.Random) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(_TEXTS)})
    for turn in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": rng.choice(_TEXTS) + str(turn)})
        if rng.random() < 0.8:
            messages.append({"role": "assistant", "content": rng.choice(_TEXTS)})
    if rng.random() < 0.1:
        messages.append({"role": "developer", "content": "dev"})
    return messages


def test_without_tools_the_tool_template_renders_exactly_what_smollm2s_own_does():
    """Every request to the embedded base goes through the tool template: byte for byte."""
    rng = random.Random(19)
    template = choose_template(SMOLLM2).template
    for _ in range(600):
        messages = _random_conversation(rng)
        for prompt in (False, True):
            assert render(template, messages, None, prompt) == render(
                SMOLLM2, messages, None, prompt
            )
            assert render(template, messages, [], prompt) == render(SMOLLM2, messages, [], prompt)


def _calls(text: str) -> list[dict]:
    """What vLLM's hermes parser reads: the JSON between <tool_call> tags (after the system
    turn, whose instructions show the format)."""
    after_system = text.split("<|im_end|>\n", 1)[1]
    found = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", after_system, re.S)
    return [json.loads(m) for m in found]


def test_tools_and_calls_render_hermes_style():
    example = {
        "messages": [
            {"role": "system", "content": "You help."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24 C"},
            {"role": "assistant", "content": "Paris 18 C, Rome 24 C."},
        ],
        "tools": [WEATHER],
    }
    text = render(
        choose_template(SMOLLM2).template,
        template_messages(example["messages"]),
        template_tools(example),
        True,
    )
    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith("<|im_start|>system\nYou help.\n\n# Tools")
    assert '{"type": "function", "function": {"name": "get_weather"' in system
    assert _calls(text) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Rome"}},
    ]
    assert (
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n24 C" in rest
    )
    assert rest.endswith("Paris 18 C, Rome 24 C.<|im_end|>\n<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" not in text  # its own system wins


def test_legacy_functions_render_as_tools():
    example = {
        "functions": [WEATHER["function"]],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather"},
                    {"type": "text", "text": "in Oslo?"},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": "-3 C"},
            {"role": "assistant", "content": "It is -3 C."},
        ],
    }
    messages = template_messages(example["messages"])
    assert messages[0]["content"] == "Weather\nin Oslo?"
    assert messages[1]["tool_calls"][0]["id"] == messages[2]["tool_call_id"] == "call00001"
    assert messages[2]["role"] == "tool"
    text = render(choose_template(SMOLLM2).template, messages, template_tools(example))
    assert _calls(text) == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert "<tool_response>\n-3 C\n</tool_response>" in text


def test_arguments_given_as_a_string_render_as_they_are():
    """A client may send back a call's arguments as the JSON string it got."""
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
            ],
        },
    ]
    text = render(choose_template(SMOLLM2).template, messages, [WEATHER])
    assert _calls(text) == [{"name": "f", "arguments": {"a": 1}}]
