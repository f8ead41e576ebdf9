"""Two trainer slots, one of them two processes (DDP over gloo): two jobs train at once, and
the two-process job learns what one process learns."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.bench.suites import fake_upstream
from tests.e2e.conftest import BASE
from tests.e2e.test_adapters import UNSEEN, ask, is_json_style
from tests.e2e.test_fine_tuning import FINAL, upload, wait_for
from tests.e2e.test_fine_tuning_pause import HYPERPARAMETERS, TINY, event_time
from tests.support.gateway_process import start_gateway
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

# Slot 0: two processes of one core each; slot 1: one process. (More threads than the
# two cores of CI: the point is that jobs share the machine, not speed.)
SLOTS = json.dumps([[1, 1], [1]])


def test_two_slots_train_two_jobs_at_once_and_a_two_process_job_learns(
    tmp_path, gateway, client, import_dir
):
    data_root = tmp_path / "data"
    data_root.mkdir()
    tiny_data = tmp_path / "tiny.jsonl"
    tiny_data.write_text("".join((DATA / "ahoy_answers.jsonl").read_text().splitlines(True)[:5]))
    # Training needs only the checkpoint; an instant stand-in takes vLLM's part here, and the
    # adapter is served by the session gateway's real vLLM below.
    with fake_upstream() as upstream:
        two_slots = start_gateway(
            data_root,
            "--vllm-url",
            upstream,
            "--no-llamacpp-enabled",
            "--tuner-slots",
            SLOTS,
            # The small job must end while the other trains: no checks after it (they are
            # asserted on the llama.cpp-only gateway and in the trials).
            "--no-finetune-after-job-checks",
        )
        try:
            two_slots.wait_ready(120)
            slots = two_slots.client()
            ddp = slots.fine_tuning.jobs.create(
                model=BASE,
                training_file=upload(slots, DATA / "json_answers.jsonl"),
                suffix="ddp",
                hyperparameters=HYPERPARAMETERS,
            )
            wait_for(slots, ddp.id, {"running"}, timeout_s=300)
            tiny = slots.fine_tuning.jobs.create(
                model=BASE, training_file=upload(slots, tiny_data), hyperparameters=TINY
            )
            tiny_done = wait_for(slots, tiny.id, FINAL)
            assert tiny_done.status == "succeeded", tiny_done.error
            # The small job ran from start to end while the other one trained.
            assert slots.fine_tuning.jobs.retrieve(ddp.id).status == "running"
            assert event_time(slots, ddp.id, "Fine-tuning job started on trainer slot 0") <= (
                event_time(slots, tiny.id, "Fine-tuning job started on trainer slot 1")
            )
            done = wait_for(slots, ddp.id, FINAL)
            assert done.status == "succeeded", done.error
            started = next(
                e
                for e in slots.fine_tuning.jobs.list_events(ddp.id, limit=100).data
                if e.message.startswith("Fine-tuning job started")
            )
            assert started.data == {"slot": 0, "processes": 2}
            steps = [
                e.data["step"]
                for e in slots.fine_tuning.jobs.list_events(ddp.id, limit=100).data
                if e.type == "metrics"
            ]
            assert sorted(steps) == list(range(1, 16))  # rank 0 alone reports, each step once
        finally:
            assert two_slots.stop() == 0

    # The adapter the two processes trained, on real vLLM.
    trained = data_root / "adapters" / done.fine_tuned_model
    folder = import_dir / "ddp"
    folder.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copyfile(trained / name, folder / name)
    with gateway.http() as http:
        registered = http.post(
            "/v1/adapters", json={"path": str(folder), "base": BASE, "suffix": "ddp"}
        )
    assert registered.status_code == 201, registered.text
    for question in UNSEEN:
        assert is_json_style(ask(client, registered.json()["id"], question))
