"""The file checks and the trainer tokenize alike, and as transformers (hence TRL and vLLM)
renders with the same template, on the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_tool_call_checks import legacy_example, multi_turn_example, weather_example
from tuner.chat_templates import chat_for_checks, chat_for_training
from tuner.examples import to_training_rows

SMOLLM2_DIR = Path(__file__).resolve().parents[2] / "var" / "models" / "smollm2-135m-instruct"
PLAIN = {
    "messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
}
EXAMPLES = [PLAIN, weather_example(), multi_turn_example(), legacy_example()]


@pytest.fixture(scope="module")
def tokenizer():
    if not (SMOLLM2_DIR / "tokenizer.json").is_file():
        pytest.skip("the embedded checkpoint is not prepared")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2_DIR)


@pytest.mark.parametrize("example", EXAMPLES, ids=["plain", "weather", "multi-turn", "legacy"])
def test_checks_trainer_and_transformers_agree(tokenizer, example):
    trainer = chat_for_training(SMOLLM2_DIR, tokenizer)
    checks = chat_for_checks(SMOLLM2_DIR)
    assert trainer.choice == checks.choice and trainer.choice.source == "tunegate"
    for row in to_training_rows(example):
        ours = trainer.tokenize_row(row)
        assert checks.tokenize_row(row) == ours
        whole = tokenizer.apply_chat_template(
            row["prompt"] + row["completion"],
            tools=row["tools"],
            chat_template=trainer.choice.template,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        assert ours["input_ids"] == list(whole)
        completion = tokenizer.decode(
            [t for t, m in zip(ours["input_ids"], ours["completion_mask"], strict=True) if m]
        )
        assert completion.endswith("<|im_end|>\n")
        if row["completion"][0].get("tool_calls"):
            assert completion.startswith("<tool_call>\n{")


def test_without_tools_the_tokens_are_those_of_the_bases_own_template(tokenizer):
    trainer = chat_for_training(SMOLLM2_DIR, tokenizer)
    (row,) = to_training_rows(PLAIN)
    own = tokenizer.apply_chat_template(PLAIN["messages"], tokenize=True, return_dict=True)[
        "input_ids"
    ]
    assert trainer.tokenize_row(row)["input_ids"] == list(own)


def test_vllms_hermes_parser_reads_the_calls_the_adapter_learns(tokenizer):
    """What the trainer puts in the completion is what vLLM's "hermes" parser turns into
    structured tool calls, arguments a JSON string."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers import ToolParserManager

    trainer = chat_for_training(SMOLLM2_DIR, tokenizer)
    example = multi_turn_example()
    (first, _) = to_training_rows(example)
    tokens = trainer.tokenize_row(first)
    completion = tokenizer.decode(
        [t for t, m in zip(tokens["input_ids"], tokens["completion_mask"], strict=True) if m],
        skip_special_tokens=True,
    ).strip()
    request = ChatCompletionRequest(
        model="m", messages=example["messages"][:2], tools=example["tools"]
    )
    parsed = ToolParserManager.get_tool_parser("hermes")(tokenizer).extract_tool_calls(
        completion, request
    )
    assert parsed.tools_called
    assert [(c.function.name, c.function.arguments) for c in parsed.tool_calls] == [
        ("get_weather", '{"city": "Paris", "unit": "celsius"}'),
        ("get_time", '{"city": "Rome"}'),
    ]
