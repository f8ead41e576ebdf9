"""Preference-pair (DPO) data checks, DPO's plan and its training rows (pure functions)."""

from __future__ import annotations

import json

import pytest

from tuner.dataset import DatasetLimits
from tuner.dpo import to_preference_rows
from tuner.dpo_hyperparameters import DPO_BASE_LEARNING_RATE, resolve_dpo
from tuner.preference_dataset import check_preference_dataset


def pair(question: str, preferred: str = "Short answer: yes.", rejected: str = "Yes.") -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


GOOD = [json.dumps(pair(f"q{i}")) for i in range(10)]


def changed(**fields) -> str:
    return json.dumps({**pair("odd one"), **fields})


def check(lines: list[str], **limits):
    return check_preference_dataset(
        ("\n".join(lines) + "\n").encode(), DatasetLimits(**limits), len
    )


def test_clean_pairs_pass():
    result = check(GOOD)
    assert result.ok and len(result.examples) == 10 and not result.warnings
    assert result.examples[3]["_line"] == 4


ASSISTANT = {"role": "assistant", "content": "fine"}


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ("{oops", "invalid_json"),
        ("[1, 2]", "data_type"),
        (changed(extra=1), "data_type"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}, ASSISTANT]}), "data_type"),
        (changed(input=None), "missing_input"),
        (changed(input={"messages": []}), "missing_input"),
        (changed(input={"messages": [{"role": "user"}]}), "message_missing_key"),
        (
            changed(input={"messages": [{"role": "user", "content": "q", "x": 1}]}),
            "message_unrecognized_key",
        ),
        (changed(input={"messages": [{"role": "robot", "content": "q"}]}), "unrecognized_role"),
        (changed(input={"messages": [{"role": "user", "content": " "}]}), "missing_content"),
        (
            changed(input={"messages": [{"role": "user", "content": "q"}], "stuff": 1}),
            "data_type",
        ),
        (
            json.dumps({k: v for k, v in pair("q").items() if k != "preferred_output"}),
            "missing_output",
        ),
        (changed(non_preferred_output=[]), "missing_output"),
        (changed(preferred_output={"role": "assistant", "content": "a"}), "missing_output"),
        (changed(preferred_output=[ASSISTANT, ASSISTANT]), "multiple_output_messages"),
        (changed(preferred_output=[{"role": "user", "content": "a"}]), "output_not_assistant"),
        (changed(non_preferred_output=[{"role": "assistant", "content": ""}]), "empty_output"),
        (
            changed(non_preferred_output=[{"role": "assistant", "tool_calls": [{"id": "1"}]}]),
            "empty_output",
        ),
        (changed(preferred_output=["text"]), "data_type"),
        (
            changed(preferred_output=[{"role": "assistant", "content": "a", "score": 1}]),
            "message_unrecognized_key",
        ),
        (json.dumps(pair("q", "Same answer.", " Same answer. ")), "identical_outputs"),
        (json.dumps(pair("x" * 500)), "example_too_long"),
    ],
)
def test_each_bad_pair_has_its_code_and_line(bad, code):
    result = check([*GOOD[:3], bad, *GOOD[3:]], max_tokens=300)
    assert not result.ok
    assert (result.errors[0].code, result.errors[0].line) == (code, 4), result.errors
    assert "line 4: " in result.error_summary()


def test_a_chat_example_in_a_preference_file_says_what_a_dpo_job_takes():
    chat = json.dumps({"messages": [{"role": "user", "content": "q"}, ASSISTANT]})
    assert "a DPO job takes preference pairs" in check([*GOOD, chat]).errors[0].message


def test_too_long_counts_the_input_and_the_longer_answer():
    long_rejected = json.dumps(pair("q", "short", "y" * 250))
    assert check([*GOOD, long_rejected], max_tokens=250).errors[0].code == "example_too_long"
    assert check([*GOOD, long_rejected], max_tokens=400).ok


def test_invalid_utf8_names_its_line():
    raw = ("\n".join(GOOD[:2]) + "\n").encode() + b'{"input": "\xff"}\n'
    result = check_preference_dataset(raw, DatasetLimits(), None)
    assert (result.errors[0].code, result.errors[0].line) == ("invalid_utf8", 3)


def test_duplicate_pairs_are_removed_and_reported_with_their_lines():
    result = check([*GOOD, GOOD[1], GOOD[4]])
    assert result.ok and len(result.examples) == 10 and result.duplicates_removed == 2
    assert result.warnings == [
        "Removed 2 duplicate pair(s) (duplicate_pair): line 11 repeats line 2; "
        "line 12 repeats line 5."
    ]
    # The same input with other answers is not a duplicate.
    assert len(check([*GOOD, json.dumps(pair("q1", "Short answer: no."))]).examples) == 11


def test_too_few_pairs():
    assert check(GOOD[:3], min_examples=5).errors[0].code == "too_few_examples"
    assert check(GOOD[:6], min_examples=5, recommended_examples=10).warnings


def test_a_pair_becomes_one_conversational_row_with_tools_as_json():
    example = pair("q", "good", "bad")
    example["input"]["messages"][0]["weight"] = 1  # not for the chat template
    example["input"]["tools"] = [{"type": "function", "function": {"name": "f"}}]
    (row,) = to_preference_rows(example)
    assert row["prompt"] == [{"role": "user", "content": "q"}]
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert json.loads(row["tools"])[0]["function"]["name"] == "f"
    assert "tools" not in to_preference_rows(pair("q"))[0]


def test_dpo_auto_plan():
    plan = resolve_dpo({}, n_pairs=40)
    assert (plan.n_epochs, plan.batch_size, plan.beta, plan.sft_loss_weight) == (3, 8, 0.1, 1.0)
    assert plan.learning_rate == pytest.approx(DPO_BASE_LEARNING_RATE)
    assert plan.trainer_options() == {"beta": 0.1, "sft_weight": 1.0}
    view = plan.openai_view()
    assert view["beta"] == 0.1 and view["n_epochs"] == 3 and view["lora_rank"] == 8
    chosen = resolve_dpo(
        {"beta": 0.5, "sft_loss_weight": 0, "learning_rate_multiplier": 0.2, "n_epochs": 2}, 40
    )
    assert (chosen.beta, chosen.sft_loss_weight, chosen.n_epochs) == (0.5, 0.0, 2)
    assert chosen.learning_rate == pytest.approx(0.2 * DPO_BASE_LEARNING_RATE)
