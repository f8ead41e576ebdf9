"""A gateway killed while a job trains: after restart the job is failed, never lost or stuck."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.e2e.conftest import BASE
from tests.support.gateway_process import processes_with, start_gateway
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

# Training needs only the HF checkpoint: this gateway runs no engine at all.
NO_ENGINES = ("--no-vllm-enabled", "--no-llamacpp-enabled")


def test_sigkill_during_training_then_restart(tmp_path):
    gateway = start_gateway(tmp_path, *NO_ENGINES)
    try:
        gateway.wait_ready(120, path="/health")
        client = gateway.client()
        with (DATA / "json_answers.jsonl").open("rb") as data:
            training = client.files.create(file=data, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=BASE, training_file=training.id, hyperparameters={"n_epochs": 25}
        )
        deadline = time.monotonic() + 300
        while client.fine_tuning.jobs.retrieve(job.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(2)
        trainers = processes_with("tuner.job", job.id)
        assert trainers
    finally:
        gateway.process.kill()
        gateway.process.wait()
    _, alive = psutil.wait_procs(trainers, timeout=10)
    assert not alive, "the trainer outlived the gateway"

    again = start_gateway(tmp_path, *NO_ENGINES)
    try:
        again.wait_ready(120, path="/health")
        client = again.client()
        after = client.fine_tuning.jobs.retrieve(job.id)
        assert after.status == "failed"
        assert after.error.code == "server_restarted"
        assert client.files.retrieve(training.id).bytes == training.bytes  # nothing lost
        assert [j.id for j in client.fine_tuning.jobs.list().data] == [job.id]
        assert any(e.level == "error" for e in client.fine_tuning.jobs.list_events(job.id).data)
    finally:
        assert again.stop() == 0
