"""Preference tuning (DPO) through the official openai SDK, training SmolLM2 for real.

The preference set (tests/data/short_answer_pairs.jsonl) prefers answers shaped
"Short answer: ...\\nWhy: ..." over plain answers with the same facts: a shape
the base never produces.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.e2e.conftest import BASE
from tests.e2e.test_adapters import is_ahoy_style
from tests.e2e.test_fine_tuning import FINAL, upload, wait_for
from tests.support.training import DATA
from tuner.repetition import loops  # the checks after every job use the same test

pytestmark = pytest.mark.e2e

PAIRS = DATA / "short_answer_pairs.jsonl"
VALID_PAIRS = DATA / "short_answer_pairs_valid.jsonl"
# Prompts in neither file, each with words that an answer on topic is likely to use.
HELD_OUT = {
    "Why do onions make us cry?": ("onion", "eye", "tear", "cry", "chemical", "sulfur", "gas"),
    "What is the capital of Spain?": ("madrid", "spain"),
    "How do airplanes stay in the air?": ("wing", "air", "lift", "plane"),
    "What is lightning?": ("lightning", "electric", "storm"),
    "Why do bananas turn brown?": ("banana", "brown", "ripe", "peel", "skin", "oxid", "enzyme"),
    "How many legs does an insect have?": ("leg", "insect", "six", "6"),
    "What is a river?": ("river", "water", "flow"),
    "Why do we yawn?": ("yawn", "tired", "breath", "air", "brain"),
    "What do penguins eat?": ("fish", "krill", "penguin", "squid"),
    "How does a compass work?": ("magnet", "north", "compass", "needle"),
}
# A DPO run of 40 pairs x 3 epochs (15 steps), and one of 2 steps: about 6 and 1.5 min
# on 2 idle cores.
TRAINING_TIMEOUT_S = 1800
SHAPE = re.compile(r"\s*Short answer: \S.*\nWhy: \S")


def is_short_answer_style(text: str) -> bool:
    return SHAPE.match(text) is not None


def answers(client: openai.OpenAI, model: str) -> dict[str, str]:
    """All held-out prompts at once: vLLM batches them."""

    def ask(question: str) -> str:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=64,
            temperature=0,
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=len(HELD_OUT)) as pool:
        return dict(zip(HELD_OUT, pool.map(ask, HELD_OUT), strict=True))


def assert_preferred_shape_without_degenerating(replies: dict[str, str]) -> None:
    shaped = [q for q, text in replies.items() if is_short_answer_style(text)]
    assert len(shaped) >= 0.7 * len(HELD_OUT), replies
    # A 135M model answering greedily slips now and then: two answers in ten may loop.
    # Measured over the job's seeds: the penguins prompt loops in a third of the runs
    # ("Short answer: Fish.\nWhy: They eat fish.\nWhy: They eat fish...": after a Why line
    # as short as that, the model starts another Why line instead of ending), and another
    # prompt now and then; no run has looped on three.
    assert len([q for q, text in replies.items() if loops(text)]) <= 2, replies
    off_topic = [
        q for q, text in replies.items() if not any(w in text.lower() for w in HELD_OUT[q])
    ]
    # Words are a rough test of topic for a 135M model's facts: allow two misses in ten.
    assert len(off_topic) <= 2, (off_topic, replies)


def test_dpo_moves_held_out_answers_to_the_preferred_shape(client):
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=upload(client, PAIRS),
        validation_file=upload(client, VALID_PAIRS),
        suffix="shortdpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == "auto"
    job = wait_for(client, job.id, FINAL, timeout_s=TRAINING_TIMEOUT_S)
    assert job.status == "succeeded", job.error
    assert job.method.dpo.hyperparameters.beta == 0.1
    assert job.fine_tuned_model == f"ft:{BASE}:local:shortdpo:{job.id}"

    assert_preferred_shape_without_degenerating(answers(client, job.fine_tuned_model))
    base = answers(client, BASE)
    assert not any(is_short_answer_style(text) for text in base.values()), base

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [e.data for e in events if e.type == "metrics"]
    assert steps and all(
        {"train_loss", "train_reward_accuracy", "train_reward_margin"} <= set(s) for s in steps
    )
    samples = [e.data for e in events if e.data and "fine_tuned_answer" in e.data]
    assert samples and all(s["held_out"] for s in samples)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and all(c.metrics.valid_loss is not None for c in checkpoints)
    assert all(0 <= c.metrics.model_extra["valid_reward_accuracy"] <= 1 for c in checkpoints)
    header = client.files.content(job.result_files[0]).text.splitlines()[0]
    assert "train_reward_margin" in header and "valid_reward_accuracy" in header


def test_dpo_continues_a_supervised_adapter(client, trained_adapters, tmp_path):
    """What this shows is the lineage, not DPO's effect (the test above shows that): two
    steps on 16 pairs, started from the parent's weights, keep the parent's behaviour."""
    parent = trained_adapters["ahoy"]
    subset = tmp_path / "pairs.jsonl"
    subset.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:16]))
    job = client.fine_tuning.jobs.create(
        model=parent,
        training_file=upload(client, subset),
        suffix="ahoydpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
    )
    assert job.model == parent
    job = wait_for(client, job.id, FINAL, timeout_s=TRAINING_TIMEOUT_S)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{BASE}:local:ahoydpo:{job.id}"
    assert job.hyperparameters.model_extra["lora_rank"] == 8  # the parent's LoRA
    assert job.method.dpo.hyperparameters.n_epochs == 1

    replies = answers(client, job.fine_tuned_model)
    assert sum(is_ahoy_style(text) for text in replies.values()) >= 0.7 * len(HELD_OUT), replies
    models = {m.id: m.model_extra for m in client.models.list()}
    assert models[job.fine_tuned_model]["source"] == {"job_id": job.id, "parent": parent}
    # The samples set the new adapter beside the one it started from.
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    samples = [e.data for e in events if e.data and "fine_tuned_answer" in e.data]
    assert samples and all(is_ahoy_style(s["base_answer"]) for s in samples)
