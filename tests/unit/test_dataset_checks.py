"""Data checks and cleaning (pure functions)."""

from __future__ import annotations

import json

import pytest

from tuner.dataset import DatasetLimits, check_dataset, split_for_validation, to_jsonl
from tuner.hyperparameters import auto_batch_size, auto_epochs, resolve


def line(*messages: tuple[str, str], **extra) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages], **extra})


GOOD = [line(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(10)]


def check(lines: list[str], **limits) -> object:
    return check_dataset(("\n".join(lines) + "\n").encode(), DatasetLimits(**limits), len)


def test_a_clean_dataset_passes():
    result = check(GOOD)
    assert result.ok and len(result.examples) == 10 and not result.warnings


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ("{oops", "invalid_json"),
        ("[1, 2]", "data_type"),
        (json.dumps({"prompt": "x"}), "missing_messages_list"),
        (json.dumps({"messages": []}), "missing_messages_list"),
        (
            json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}),
            "message_missing_key",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "q", "x": 1},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ),
            "message_unrecognized_key",
        ),
        (line(("robot", "q"), ("assistant", "a")), "unrecognized_role"),
        (line(("user", ""), ("assistant", "a")), "missing_content"),
        (line(("user", "q")), "example_missing_assistant_message"),
        (line(("user", "x" * 5000), ("assistant", "a")), "example_too_long"),
    ],
)
def test_each_problem_has_its_code_and_line(bad, code):
    result = check([*GOOD[:3], bad, *GOOD[3:]], max_tokens=1000)
    assert not result.ok
    assert (result.errors[0].code, result.errors[0].line) == (code, 4)
    assert "line 4: " in result.error_summary()


def test_invalid_utf8_names_its_line():
    raw = ("\n".join(GOOD[:2]) + "\n").encode() + b'{"messages": "\xff"}\n'
    result = check_dataset(raw, DatasetLimits(), None)
    assert (result.errors[0].code, result.errors[0].line) == ("invalid_utf8", 3)


def test_too_few_examples():
    result = check(GOOD[:3], min_examples=5)
    assert result.errors[0].code == "too_few_examples"
    assert check(GOOD[:6], min_examples=5, recommended_examples=10).warnings


def test_duplicates_are_removed_and_counted():
    result = check(GOOD + GOOD[:3])
    assert result.ok and len(result.examples) == 10 and result.duplicates_removed == 3
    assert any("3 exact duplicate" in w for w in result.warnings)


def test_mixed_system_prompts_are_reported():
    with_system = [
        line(("system", "Be brief."), ("user", f"s{i}"), ("assistant", "a")) for i in range(3)
    ]
    result = check(GOOD + with_system)
    assert result.ok
    assert any(
        "3 example(s) start with a system message and 10 do not" in w for w in result.warnings
    )


def test_split_holds_out_ten_percent_of_large_datasets_only():
    examples = [{"messages": [], "_line": i} for i in range(200)]
    train, valid = split_for_validation(examples, seed=1)
    assert (len(train), len(valid)) == (180, 20)
    assert split_for_validation(examples[:20], seed=1) == (examples[:20], [])
    assert b'"_line"' not in to_jsonl(train)


def test_auto_hyperparameters_follow_openais_epoch_rule():
    assert auto_epochs(10) == 10 and auto_epochs(12) == 9 and auto_epochs(34) == 3
    assert auto_epochs(3) == 25 and auto_epochs(100_000) == 1
    assert auto_batch_size(12) == 4 and auto_batch_size(1000) == 16
    plan = resolve({"n_epochs": "auto", "batch_size": 2, "lora_rank": 4}, n_examples=12)
    assert (plan.n_epochs, plan.batch_size, plan.lora_rank, plan.lora_alpha) == (9, 2, 4, 8)
    assert plan.learning_rate == pytest.approx(1e-3)
    assert resolve({"learning_rate_multiplier": 0.5}, 12).learning_rate == pytest.approx(5e-4)


def test_every_assistant_turn_is_trained_unless_weight_is_zero():
    from tuner.examples import to_training_rows

    example = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "a1", "weight": 0},
            {"role": "user", "content": "u2"},
            {"role": "assistant", "content": "a2"},
            {"role": "user", "content": "u3"},
            {"role": "assistant", "content": "a3"},
        ]
    }
    rows = to_training_rows(example)
    assert [r["completion"][0]["content"] for r in rows] == ["a2", "a3"]
    assert [m["content"] for m in rows[1]["prompt"]] == ["s", "u1", "a1", "u2", "a2", "u3"]
    assert all("weight" not in m for r in rows for m in r["prompt"])
