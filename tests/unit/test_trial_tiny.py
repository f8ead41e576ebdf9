"""Trial runs, drift and the checks after training, on a tiny random Llama (seconds)."""

from __future__ import annotations

import io
import json

import pytest

from tests.unit.test_tuner_job import events_of, tiny_base, write_run_dir
from tuner.drift import general_prompts, measure_drift
from tuner.job import EventSink, JobSpec, run
from tuner.trial_generation import greedy_answers, mixed_greedy_answers

__all__ = ["tiny_base"]  # the fixture used here

REPORT_KEYS = {
    "held_out_loss_before",
    "held_out_loss_after",
    "control_held_out_loss_after",
    "learns",
    "verdict",
    "reason",
    "samples",
    "estimated_full_run_s",
    "tokens_per_s",
    "drift",
    "repetition",
}


@pytest.fixture(autouse=True)
def short_answers(monkeypatch) -> None:
    """A tiny random model's answers are noise: a few tokens of it test the mechanics."""
    monkeypatch.setattr("tuner.trial_checks.ANSWER_TOKENS", 8)
    monkeypatch.setattr("tuner.trial_holdout.SAMPLE_TOKENS", 8)


def with_block(spec: JobSpec, **blocks: dict) -> JobSpec:
    path = spec.run_dir / "job.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **blocks}))
    return JobSpec.from_run_dir(spec.run_dir)


def test_an_untouched_adapter_has_no_drift(tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    prompts = [p.messages for p in general_prompts()[:3]]
    base = greedy_answers(model, tokenizer, prompts, 8, adapter=False)
    assert base == greedy_answers(model, tokenizer, prompts, 8, adapter=True)
    drift = measure_drift(model, tokenizer, prompts, base)
    assert drift.kl == pytest.approx(0.0, abs=1e-6)
    assert drift.nll_increase == pytest.approx(0.0, abs=1e-5)


def test_base_and_adapter_answers_in_one_batch_are_those_of_two(tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = get_peft_model(  # random B: the adapter answers differently from the base
        AutoModelForCausalLM.from_pretrained(tiny_base),
        LoraConfig(
            r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    prompts = [p.messages for p in general_prompts()[:3]]
    base = greedy_answers(model, tokenizer, prompts, 8, adapter=False)
    tuned = greedy_answers(model, tokenizer, prompts, 8, adapter=True)
    assert base != tuned
    asks = [(p, False) for p in prompts] + [(p, True) for p in prompts]
    assert mixed_greedy_answers(model, tokenizer, asks, 8) == base + tuned


def test_a_trial_reports_both_trainings_and_saves_no_adapter(tiny_base, tmp_path):
    spec = write_run_dir(tmp_path / "run", tiny_base, valid=True, lr=5e-3)
    spec = with_block(spec, trial={"examples": 10, "max_steps": 3, "held_out_fraction": 0.25})
    stream = io.StringIO()
    run(spec, EventSink(stream))
    events = events_of(stream)
    assert [e["type"] for e in events].count("progress") == 3  # the trial's steps; the
    result = events[-1]  # control trains silently
    assert result["type"] == "result" and result["adapter_dir"] is None
    report = result["trial_report"]
    assert REPORT_KEYS <= set(report)
    assert (report["examples"], report["held_out_examples"], report["steps"]) == (10, 2, 3)
    assert isinstance(report["learns"], bool)
    assert len(report["samples"]) == 2
    assert set(report["samples"][0]) == {"prompt", "base_answer", "trial_answer", "expected"}
    assert report["estimated_full_run_s"] > 0 and report["estimate"]["n_epochs"] == 2
    assert not spec.adapter_dir.exists()


def test_a_trial_past_its_time_stops_after_its_minimum_steps(tiny_base, tmp_path):
    spec = write_run_dir(tmp_path / "run", tiny_base, valid=True, lr=5e-3)
    bounded = {"examples": 10, "max_steps": 6, "max_train_s": 1e-6, "held_out_fraction": 0.25}
    spec = with_block(spec, trial=bounded)
    stream = io.StringIO()
    run(spec, EventSink(stream))
    events = events_of(stream)
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3]  # MIN_TRIAL_STEPS, not the cap of 6
    report = events[-1]["trial_report"]
    assert report["steps"] == 3
    assert report["control_held_out_loss_after"] > 0


def test_a_small_job_reports_checks_and_a_held_out_fold(tiny_base, tmp_path):
    spec = write_run_dir(tmp_path / "run", tiny_base, valid=False)
    spec = with_block(spec, checks={"small_set_fold": True})
    stream = io.StringIO()
    run(spec, EventSink(stream))
    result = events_of(stream)[-1]
    checks = result["checks"]
    assert checks["drift"]["prompts"] == len(general_prompts())
    assert checks["repetition"]["prompts"] >= 4 and not checks["samples_held_out"]
    fold = checks["held_out"]
    assert (fold["train_examples"], fold["held_out_examples"]) == (6, 2)
    assert [c["epoch"] for c in fold["curve"]] == [1.0, 2.0]
    assert len(fold["samples"]) == 2 and fold["samples"][0]["fine_tuned_answer"] is not None
    assert (spec.adapter_dir / "adapter_model.safetensors").is_file()
