"""The file checks of function-calling examples (OpenAI's format), and the property that
joins them to the trainer: every example the checks accept renders and tokenizes as
training rows with the template the trainer uses."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from tests.unit.test_tool_template import PLAIN_NOT_CHATML, QWEN_LIKE, SMOLLM2
from tuner.chat_templates import TrainingChat, choose_template
from tuner.dataset import DatasetLimits, check_dataset
from tuner.examples import to_training_rows

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_JSON = REPO / "var" / "models" / "smollm2-135m-instruct" / "tokenizer.json"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city", "unit"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def _encoder():
    """SmolLM2's tokenizer where the checkpoint is prepared; bytes otherwise."""
    if TOKENIZER_JSON.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(TOKENIZER_JSON))
        return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    return lambda text: list(text.encode())


def chat_for(template: str) -> TrainingChat:
    return TrainingChat(choose_template(template), {}, _encoder())


SMOL_CHAT = chat_for(SMOLLM2)


def call(call_id: str, name: str = "get_weather", arguments: object = None) -> dict:
    arguments = '{"city": "Paris", "unit": "celsius"}' if arguments is None else arguments
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def weather_example(**extra: object) -> dict:
    """The shape OpenAI's fine-tuning guide shows: no content beside the tool calls."""
    return {
        "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "tool_calls": [call("call_1")]},
        ],
        "tools": TOOLS,
        "parallel_tool_calls": False,
        **extra,
    }


def multi_turn_example() -> dict:
    return {
        "messages": [
            {"role": "system", "content": "You help with weather."},
            {"role": "user", "content": "Weather and time in Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [call("c1"), call("c2", "get_time", '{"city": "Rome"}')],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "c2", "content": "14:05"},
            {"role": "assistant", "content": "21 C, and it is 14:05.", "weight": 1},
        ],
        "tools": TOOLS,
    }


def legacy_example() -> dict:
    return {
        "functions": [t["function"] for t in TOOLS],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": "-3 C"},
            {"role": "assistant", "content": "It is -3 C."},
        ],
    }


def check(examples: list[dict], chat: object = SMOL_CHAT) -> object:
    raw = ("\n".join(json.dumps(e) for e in examples) + "\n").encode()
    return check_dataset(raw, DatasetLimits(min_examples=1), chat)


@pytest.mark.parametrize("example", [weather_example(), multi_turn_example(), legacy_example()])
def test_openais_documented_formats_pass(example):
    result = check([example])
    assert result.ok, result.error_summary()
    rows = to_training_rows(example)
    assert rows and rows[0]["tools"]


def test_the_checks_count_the_rendered_tokens():
    result = check([weather_example()])
    tokens = SMOL_CHAT(SMOL_CHAT.render_example(weather_example()))
    assert result.ok and tokens > 100  # the tools are in the system turn
    too_long = check_dataset(
        (json.dumps(weather_example()) + "\n").encode(),
        DatasetLimits(min_examples=1, max_tokens=tokens - 1),
        SMOL_CHAT,
    )
    assert too_long.errors[0].code == "example_too_long"


def _mutate(example: dict, path: list, value: object) -> dict:
    changed = copy.deepcopy(example)
    target = changed
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


_DELETE = object()
CALL = ["messages", 1, "tool_calls", 0]
BAD = [
    (CALL + ["id"], _DELETE, "tool_call_missing_key"),
    (CALL + ["type"], "code_interpreter", "tool_call_unrecognized_type"),
    (CALL + ["function", "arguments"], "{not json", "tool_call_invalid_arguments"),
    (CALL + ["function", "arguments"], "[1, 2]", "tool_call_invalid_arguments"),
    (CALL + ["function", "arguments"], {"city": "Paris"}, "tool_call_invalid_arguments"),
    (CALL + ["function", "arguments"], _DELETE, "tool_call_missing_key"),
    (CALL + ["function", "name"], "get_news", "tool_call_unknown_function"),
    (CALL + ["function", "name"], "get weather", "invalid_function_name"),
    (["messages", 1, "tool_calls"], [], "data_type"),
    (["messages", 1, "tool_calls"], [call("a"), call("b")], "parallel_tool_calls_disabled"),
    (["messages", 0, "tool_calls"], [call("x")], "tool_call_wrong_role"),
    (["messages", 0, "content"], None, "missing_content"),
    (["messages", 1, "weight"], 2, "invalid_weight"),
    (["messages", 0, "weight"], 1, "invalid_weight"),
    (["messages", 1, "weight"], 0, "example_missing_assistant_message"),
    (
        ["messages", 0, "content"],
        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        "unsupported_content_type",
    ),
    (["tools"], {"type": "function"}, "tools_data_type"),
    (["tools", 0, "type"], "file_search", "tool_unrecognized_type"),
    (["tools", 0, "function", "name"], _DELETE, "tool_missing_key"),
    (["tools", 0, "function", "parameters"], "object", "tool_invalid_parameters"),
    (["tools", 1], TOOLS[0], "duplicate_tool_name"),
    (["functions"], [], "data_type"),
    (["parallel_tool_calls"], "no", "data_type"),
]


@pytest.mark.parametrize(
    ("path", "value", "code"), BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)]
)
def test_each_tool_problem_has_its_code_and_line(path, value, code):
    good = weather_example()
    result = check([good, _mutate(good, path, value)])
    assert not result.ok
    assert code in {p.code for p in result.errors if p.line == 2}, result.error_summary()
    assert all(p.line == 2 for p in result.errors)


def test_tool_answers_must_match_a_call():
    example = multi_turn_example()
    assert check([_mutate(example, ["messages", 3, "tool_call_id"], "nope")]).errors[0].code == (
        "tool_call_id_unknown"
    )
    missing = check([_mutate(example, ["messages", 3, "tool_call_id"], _DELETE)])
    assert missing.errors[0].code == "message_missing_key"
    twice = _mutate(example, ["messages", 2, "tool_calls", 1, "id"], "c1")
    assert "duplicate_tool_call_id" in {p.code for p in check([twice]).errors}


def test_a_base_that_cannot_express_tools_refuses_them_per_line_and_trains_the_rest():
    plain = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    result = check([plain, weather_example()], chat_for(PLAIN_NOT_CHATML))
    assert [(p.code, p.line) for p in result.errors] == [("tools_not_supported", 2)]
    assert check([plain], chat_for(PLAIN_NOT_CHATML)).ok


def test_a_template_that_raises_is_a_per_line_error():
    strict = QWEN_LIKE.replace(
        "{%- for tc in message.tool_calls %}",
        "{%- for tc in message.tool_calls %}{%- if tc.id | length != 9 %}"
        "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
        "{%- endif %}",
    )
    result = check([weather_example()], chat_for(strict))
    assert result.errors[0].code == "template_error" and "length 9" in result.errors[0].message
    ok = _mutate(weather_example(), CALL + ["id"], "abcdefghi")
    assert check([ok], chat_for(strict)).ok


# --- the property --------------------------------------------------------------------
_TEXTS = ["Hi", "Weather in Paris?", "ünï {x}", "two\nlines", " spaced ", "<tool_call>", "{{ x }}"]
_SLIP = 0.04  # how often each random choice is a wrong one


def _pick(rng: random.Random, good: list, bad: list) -> object:
    return rng.choice(bad) if bad and rng.random() < _SLIP else rng.choice(good)


def _random_call(rng: random.Random, number: int, names: list[str]) -> object:
    made = {
        "id": _pick(rng, [f"call_{number}", f"c{number:08d}"], ["", None, 7]),
        "type": _pick(rng, ["function"], ["retrieval"]),
        "function": {
            "name": _pick(rng, names, ["other", "bad name", ""]),
            "arguments": _pick(
                rng,
                ['{"city": "Paris", "unit": "celsius"}', '{"city":"Kyiv"}', "{}"],
                ["", "[1]", "{oops", {"city": "Rome"}, None],
            ),
        },
    }
    for key in ("id", "type", "function"):
        if rng.random() < _SLIP / 3:
            del made[key]
    return _pick(rng, [made], ["not a call"])


def _random_content(rng: random.Random) -> object:
    return _pick(
        rng,
        [
            rng.choice(_TEXTS),
            [{"type": "text", "text": rng.choice(_TEXTS)}, {"type": "text", "text": "more"}],
        ],
        [None, "", [{"type": "image_url", "image_url": {"url": "http://x"}}], 42],
    )


def _random_example(rng: random.Random) -> dict:
    example: dict = {}
    roll = rng.random()
    if roll < 0.6:
        example["tools"] = copy.deepcopy(
            _pick(rng, [TOOLS, TOOLS[:1]], [[{"type": "function"}], {}])
        )
    elif roll < 0.7:
        example["functions"] = [t["function"] for t in TOOLS]
    names = ["get_weather"] if example.get("tools") == TOOLS[:1] else ["get_weather", "get_time"]
    if rng.random() < 0.3:
        example["parallel_tool_calls"] = _pick(rng, [True, False], ["yes"])
    messages: list[dict] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": _random_content(rng)})
    for turn in range(rng.randint(1, 3)):
        messages.append({"role": _pick(rng, ["user"], ["robot"]), "content": _random_content(rng)})
        assistant: dict = {"role": "assistant"}
        kind = rng.random()
        open_ids: list[object] = []
        if kind < 0.5:
            calls = [_random_call(rng, turn * 10 + i, names) for i in range(rng.choice([1, 1, 2]))]
            assistant["tool_calls"] = _pick(rng, [calls], [[]])
            open_ids = [c.get("id") for c in calls if isinstance(c, dict)]
            if rng.random() < 0.7:
                assistant["content"] = rng.choice([None, "Let me check."])
        elif kind < 0.6:
            assistant["function_call"] = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
            assistant["content"] = None
        else:
            assistant["content"] = _random_content(rng)
        if rng.random() < 0.15:
            assistant["weight"] = _pick(rng, [0, 1], [2, True])
        messages.append(assistant)
        for call_id in open_ids:
            if rng.random() < 0.8:
                answer = _pick(rng, [call_id], ["zzz"])
                messages.append({"role": "tool", "tool_call_id": answer, "content": "ok"})
        if "function_call" in assistant and rng.random() < 0.8:
            messages.append({"role": "function", "name": "get_weather", "content": "-3 C"})
        if rng.random() < 0.3:
            messages.append({"role": "assistant", "content": rng.choice(["Done.", "It is 21 C."])})
    example["messages"] = messages
    return example


@pytest.mark.parametrize(
    "template",
    [SMOLLM2, QWEN_LIKE, PLAIN_NOT_CHATML],
    ids=["tool-template", "own-tools", "no-tools"],
)
def test_every_example_the_checks_accept_renders_and_tokenizes_for_training(template):
    rng = random.Random(2027)
    chat = chat_for(template)
    accepted = refused = 0
    for _ in range(1500):
        example = _random_example(rng)
        result = check([example], chat)
        if not result.ok:
            refused += 1
            assert all(p.line == 1 and p.code for p in result.errors)
            continue
        accepted += 1
        rows = to_training_rows(example)
        assert rows, example
        for row in rows:
            tokens = chat.tokenize_row(row)
            assert 1 in tokens["completion_mask"], example
            assert len(tokens["input_ids"]) == len(tokens["completion_mask"])
    assert accepted > 80 and refused > 80  # both sides of the property were exercised
