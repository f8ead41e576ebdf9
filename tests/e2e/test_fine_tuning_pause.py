"""Pause and resume through the SDK, one slot shared one job at a time, and checkpoints
served as models: on the session gateway (one trainer slot, the default)."""

from __future__ import annotations

import time

import openai
import pytest

from tests.e2e.conftest import BASE
from tests.e2e.test_adapters import UNSEEN, ask, is_json_style
from tests.e2e.test_fine_tuning import FINAL, upload, wait_for
from tests.support.gateway_process import processes_with
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

HYPERPARAMETERS = {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2}
TINY = {"n_epochs": 1, "batch_size": 5}


def event_time(client: openai.OpenAI, job_id: str, starts_with: str) -> int:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return next(e.created_at for e in reversed(events) if e.message.startswith(starts_with))


def test_pause_frees_the_slot_and_resume_continues_to_a_trained_adapter(client, tmp_path):
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=upload(client, DATA / "json_answers.jsonl"),
        suffix="paused",
        hyperparameters=HYPERPARAMETERS,
    )
    wait_for(client, job.id, {"running"}, timeout_s=300)
    tiny_data = tmp_path / "tiny.jsonl"
    tiny_data.write_text("".join((DATA / "ahoy_answers.jsonl").read_text().splitlines(True)[:5]))
    tiny = client.fine_tuning.jobs.create(
        model=BASE, training_file=upload(client, tiny_data), hyperparameters=TINY
    )
    deadline = time.monotonic() + 300
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data):
        assert time.monotonic() < deadline
        time.sleep(1)

    assert client.fine_tuning.jobs.pause(job.id).status == "running"  # saving its checkpoint
    paused = wait_for(client, job.id, {"paused"} | FINAL, timeout_s=300)
    assert paused.status == "paused"
    assert not processes_with("tuner.job", job.id)
    paused_at = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data)
    # The one slot went to the job that waited for it.
    tiny_messages = [e.message for e in client.fine_tuning.jobs.list_events(tiny.id).data]
    assert any("number 1 in the queue (1 of 1 slot busy)" in m for m in tiny_messages)
    assert client.fine_tuning.jobs.resume(job.id).status in ("queued", "running")

    tiny_done = wait_for(client, tiny.id, FINAL)
    assert tiny_done.status == "succeeded", tiny_done.error
    done = wait_for(client, job.id, FINAL)
    assert done.status == "succeeded", done.error
    assert event_time(client, tiny.id, "Fine-tuning job started") >= event_time(
        client, job.id, "Fine-tuning job paused"
    )
    assert event_time(client, job.id, "Fine-tuning job running again") >= tiny_done.finished_at
    resumed = event_time(client, job.id, f"Resumed from step {paused_at}")
    assert resumed >= tiny_done.finished_at
    for question in UNSEEN:
        assert is_json_style(ask(client, done.fine_tuned_model, question))

    # Checkpoints are models: the oldest kept one answers, with weights of its own.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [15, 12, 9]
    early = checkpoints[-1].fine_tuned_model_checkpoint
    assert early == f"{done.fine_tuned_model}:ckpt-step-9"
    listed = {m.id: m.model_extra for m in client.models.list()}
    assert listed[early]["kind"] == "adapter" and listed[early]["parent"] == BASE
    assert listed[early]["source"] == {"job_id": job.id, "checkpoint_step": 9}
    assert logprobs(client, early) != logprobs(client, done.fine_tuned_model)
    completion = client.completions.create(model=early, prompt="The sky is", max_tokens=4)
    assert completion.choices[0].text

    client.models.delete(done.fine_tuned_model)
    assert ask(client, early, UNSEEN[0])  # outlives the job's model
    assert client.models.delete(early).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(early)


def logprobs(client: openai.OpenAI, model: str) -> list[tuple[str, float]]:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": UNSEEN[1]}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
    )
    return [(t.token, round(t.logprob, 3)) for t in reply.choices[0].logprobs.content]
