"""The base's answers to the general prompts, kept between jobs, on a tiny random Llama."""

from __future__ import annotations

import os

import pytest

from tests.unit.test_tuner_job import tiny_base
from tuner import base_answers as module
from tuner.base_answers import base_answers
from tuner.drift import general_prompts

__all__ = ["tiny_base"]  # the fixture used here

PROMPTS = [p.messages for p in general_prompts()[:3]]


@pytest.fixture
def model_and_tokenizer(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture
def generations(monkeypatch) -> list[int]:
    """How many times the base generated (each call appends its prompt count)."""
    calls: list[int] = []
    real = module.greedy_answers

    def counting(model, tokenizer, prompts, max_new_tokens, adapter=True):
        calls.append(len(prompts))
        return real(model, tokenizer, prompts, max_new_tokens, adapter=adapter)

    monkeypatch.setattr(module, "greedy_answers", counting)
    return calls


def test_a_second_job_reads_the_answers_the_first_generated(
    tiny_base, model_and_tokenizer, generations, tmp_path
):
    model, tokenizer = model_and_tokenizer
    first = base_answers(model, tokenizer, PROMPTS, 6, tiny_base, tmp_path / "cache")
    second = base_answers(model, tokenizer, PROMPTS, 6, tiny_base, tmp_path / "cache")
    assert first == second and len(first) == len(PROMPTS)
    assert generations == [len(PROMPTS)]
    assert [p.name.startswith("base-answers-") for p in (tmp_path / "cache").iterdir()] == [True]


def test_another_base_state_prompt_set_or_length_is_generated_anew(
    tiny_base, model_and_tokenizer, generations, tmp_path
):
    model, tokenizer = model_and_tokenizer
    cache = tmp_path / "cache"
    base_answers(model, tokenizer, PROMPTS, 6, tiny_base, cache)
    base_answers(model, tokenizer, PROMPTS, 7, tiny_base, cache)
    base_answers(model, tokenizer, PROMPTS[:2], 6, tiny_base, cache)
    weights = next(tiny_base.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # retrained
    base_answers(model, tokenizer, PROMPTS, 6, tiny_base, cache)
    assert generations == [3, 3, 2, 3]


def test_a_damaged_or_unwritable_cache_only_costs_the_generation(
    tiny_base, model_and_tokenizer, generations, tmp_path
):
    model, tokenizer = model_and_tokenizer
    cache = tmp_path / "cache"
    expected = base_answers(model, tokenizer, PROMPTS, 6, tiny_base, cache)
    (stored,) = cache.iterdir()
    stored.write_text('{"answers": ["half')
    assert base_answers(model, tokenizer, PROMPTS, 6, tiny_base, cache) == expected
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert base_answers(model, tokenizer, PROMPTS, 6, tiny_base, blocked / "cache") == expected
    assert base_answers(model, tokenizer, PROMPTS, 6, tiny_base, None) == expected
    assert generations == [3, 3, 3, 3]


def test_set_up_keeps_the_answers_a_job_then_reads(tiny_base, generations, tmp_path, monkeypatch):
    from tuner import warm_checks
    from tuner.base_answers import read_cached
    from tuner.trial_checks import ANSWER_TOKENS

    monkeypatch.setattr(warm_checks, "ANSWER_TOKENS", 4)  # a tiny model's noise: few tokens
    argv = ["--base", str(tiny_base), "--cache", str(tmp_path / "checks")]
    assert warm_checks.main(argv) == 0
    assert generations == [len(general_prompts())]
    assert warm_checks.main(argv) == 0  # kept: nothing generated again
    assert generations == [len(general_prompts())]
    everything = [p.messages for p in general_prompts()]
    assert read_cached(everything, 4, tiny_base, tmp_path / "checks") is not None
    assert read_cached(everything, ANSWER_TOKENS, tiny_base, tmp_path / "checks") is None
