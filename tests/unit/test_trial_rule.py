"""The pure parts of validating before and after: the learns rule, repetition, the splits."""

from __future__ import annotations

import json

import pytest

from tests.support.gateway_process import REPO
from tuner.drift import KL_WARNING, DriftReport, general_prompts
from tuner.repetition import LOOPING_FRACTION, compare, loops, repeated_ngram_fraction
from tuner.trial import capped_steps, sample_split, shuffled_answers
from tuner.trial_holdout import curve_of, overfitting_warning, pick_fold
from tuner.trial_rule import judge

EXAMPLES = [
    json.loads(line)
    for line in (REPO / "tests" / "data" / "json_answers.jsonl").read_text().splitlines()
]


@pytest.mark.parametrize(
    ("before", "after", "control", "learns", "kind"),
    [
        (2.0, 0.8, 1.6, True, "content"),  # well below the shuffled control
        (2.0, 1.5, 1.55, False, "format_only"),  # random codes: like the control
        (2.0, 1.7, 1.5, False, "format_only"),  # worse than the control: memorised codes
        (2.0, 0.05, 0.05, True, "fixed_answers"),  # one fixed answer: learned exactly
        (2.0, 1.98, 2.5, False, "nothing"),  # the held-out loss did not fall
    ],
)
def test_learns_needs_a_fall_and_a_win_over_the_shuffled_control(
    before, after, control, learns, kind
):
    verdict = judge(before, after, control)
    assert (verdict.learns, verdict.kind) == (learns, kind)
    assert verdict.reason


def test_repeated_ngram_fraction():
    assert repeated_ngram_fraction("The sky is blue on a clear day.") == 0.0
    assert repeated_ngram_fraction("yes") == 0.0
    loop = "and then the cat sat " * 10
    assert repeated_ngram_fraction(loop) > 0.8
    # Case and punctuation at word ends do not hide a loop.
    assert repeated_ngram_fraction("Go on, go on. GO ON go on") == pytest.approx(1 - 2 / 6)


def test_a_loop_after_a_sound_opening_is_a_loop():
    # Seen after a real fine-tune of the embedded model: the opening keeps the repeated
    # trigram fraction under a half, but the answer has lost track.
    late = "Here's a packing list for a three-day trip to Rome:\n\nDay 1: Rome" + "\n- Rome" * 12
    assert repeated_ngram_fraction(late) < LOOPING_FRACTION
    assert loops(late)
    assert not loops("Paris is the capital of France. Paris is known for the Eiffel Tower.")
    # A step-by-step answer with some shared words does not loop.
    steps = "First, boil the water. Then add the pasta. Then stir the pasta. Then drain it."
    assert not loops(steps)
    report = compare([late, "A normal answer here."], ["Rome is in Italy.", "Fine."])
    assert report.looping == 1 and report.worst_answer.startswith("Here's a packing list")


def test_repetition_warns_when_the_adapter_loops_and_the_base_does_not():
    fine = compare(["Paris is the capital."], ["The capital is Paris."])
    assert fine.looping == 0 and fine.warning() is None
    looping = compare(["one two three " * 8, "A normal answer here."], ["x y z", "w v u"])
    assert looping.looping == 1 and looping.base_looping == 0
    assert "repeats itself" in looping.warning()
    assert looping.as_dict()["prompts"] == 2


def test_drift_warning_threshold():
    assert DriftReport(12, KL_WARNING / 2, 0.1).warning() is None
    assert "Style drift" in DriftReport(12, KL_WARNING * 2, 1.0).warning()


def test_general_prompts_are_shipped_with_multi_step_ones():
    prompts = general_prompts()
    assert 8 <= len(prompts) <= 16
    assert any(p.multi_step for p in prompts) and not all(p.multi_step for p in prompts)
    assert all(p.messages[-1]["role"] == "user" for p in prompts)


def test_trial_sample_holds_out_a_quarter_and_at_least_two():
    train, held = sample_split(EXAMPLES, 32, 0.25, seed=0)
    assert (len(train), len(held)) == (9, 3)
    train, held = sample_split(EXAMPLES, 5, 0.25, seed=0)
    assert (len(train), len(held)) == (3, 2)
    assert sample_split(EXAMPLES, 8, 0.25, seed=1) == sample_split(EXAMPLES, 8, 0.25, seed=1)
    assert not {json.dumps(e) for e in train} & {json.dumps(e) for e in held}


def test_the_control_moves_every_answer_to_another_prompt():
    control = shuffled_answers("supervised", EXAMPLES, seed=0)
    pairs = {(e["messages"][0]["content"], e["messages"][-1]["content"]) for e in EXAMPLES}
    moved = {(e["messages"][0]["content"], e["messages"][-1]["content"]) for e in control}
    assert not pairs & moved  # no prompt keeps its own answer
    assert sorted(a for _, a in pairs) == sorted(a for _, a in moved)  # same answers, moved


def test_trial_steps_are_capped():
    assert capped_steps(24, 4, 5, 16) == 16
    assert capped_steps(8, 4, 3, 16) == 6
    assert capped_steps(8, 4, 3, None) == 6


def test_the_small_set_fold_is_a_seeded_quarter():
    rest, fold = pick_fold(EXAMPLES, seed=3)
    assert (len(rest), len(fold)) == (9, 3)
    assert pick_fold(EXAMPLES, seed=3) == (rest, fold)
    assert len(pick_fold(EXAMPLES[:5], seed=0)[1]) == 2


def test_the_overfitting_alarm_on_the_fold_curve():
    log = [
        {"loss": 2.0, "epoch": 0.5}, {"eval_loss": 1.5, "epoch": 1.0},
        {"loss": 1.0, "epoch": 1.5}, {"eval_loss": 1.2, "epoch": 2.0},
        {"loss": 0.2, "epoch": 2.5}, {"eval_loss": 1.6, "epoch": 3.0},
    ]  # fmt: skip
    curve = curve_of(log)
    assert [c["valid_loss"] for c in curve] == [1.5, 1.2, 1.6]
    assert "overfitting" in overfitting_warning(curve)
    assert overfitting_warning(curve[:2]) is None
