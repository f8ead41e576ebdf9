"""A gateway killed halfway through a job: after restart the job resumes from its last
checkpoint and ends with an adapter that has learnt what it was taught."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import BASE, STARTUP_TIMEOUT_S
from tests.e2e.test_adapters import UNSEEN, ask, is_json_style
from tests.e2e.test_fine_tuning import wait_for
from tests.support.gateway_process import processes_of_data_root, processes_with, start_gateway
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

# 12 examples, batch 4: 3 steps an epoch, 15 in all; a checkpoint every 3 steps.
HYPERPARAMETERS = {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2}
# What is under test is the resume; the checks after a job are asserted elsewhere.
NO_CHECKS = "--no-finetune-after-job-checks"


def test_sigkill_during_training_then_restart_resumes_from_the_last_checkpoint(tmp_path):
    # As users run it: managed vLLM and llama.cpp, which must die with the gateway too.
    gateway = start_gateway(tmp_path, NO_CHECKS)
    try:
        gateway.wait_ready(STARTUP_TIMEOUT_S)  # both engines run, vLLM's engine core too
        client = gateway.client()
        with (DATA / "json_answers.jsonl").open("rb") as data:
            training = client.files.create(file=data, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, suffix="resumed", hyperparameters=HYPERPARAMETERS
        )
        deadline = time.monotonic() + 900
        while not any(
            c.step_number >= 6 for c in client.fine_tuning.jobs.checkpoints.list(job.id).data
        ):
            assert time.monotonic() < deadline, "no checkpoint at step 6 in time"
            time.sleep(1)
        saved = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data)
        trainers = processes_with("tuner.job", job.id)
        assert trainers
        tree = gateway.tree()
        vllm = [p for p in tree if "vllm.entrypoints" in " ".join(p.cmdline())]
        assert vllm and all(p.children() for p in vllm)  # each with its engine core
        assert any("llama-server" in " ".join(p.cmdline()) for p in tree)
    finally:
        killed = gateway.kill()  # and no process of its tree survives it
    assert {p.pid for p in trainers} <= {p.pid for p in killed}
    assert processes_of_data_root(tmp_path) == []

    again = start_gateway(tmp_path, NO_CHECKS)
    try:
        again.wait_ready(120, path="/health")
        client = again.client()
        done = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
        assert done.status == "succeeded", done.error
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data[::-1]
        messages = [e.message for e in events]
        assert any("the gateway restarted" in m for m in messages)
        resumed = next(i for i, e in enumerate(events) if e.message.startswith("Resumed from"))
        step = events[resumed].data["resumed_from_step"]
        assert step >= saved and step % 3 == 0  # the last checkpoint sealed before the kill
        steps_after = [e.data["step"] for e in events[resumed:] if e.type == "metrics"]
        assert steps_after[0] == step + 1 and steps_after[-1] == 15
        assert client.files.retrieve(training.id).bytes == training.bytes  # nothing lost
        assert [j.id for j in client.fine_tuning.jobs.list().data] == [job.id]

        again.wait_ready(STARTUP_TIMEOUT_S)
        # Nothing from the previous life runs: every process of this data root is the new one's.
        ours = {p.pid for p in again.tree()}
        assert {p.pid for p in processes_of_data_root(tmp_path)} <= ours
        assert not [p for p in killed if p.is_running()]
        for question in UNSEEN:
            assert is_json_style(ask(client, done.fine_tuned_model, question))
    finally:
        assert again.stop() == 0
