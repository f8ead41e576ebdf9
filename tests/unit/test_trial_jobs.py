"""Trial jobs and the checks after training, through the routes, with a stand-in trainer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.finetune.database import open_database
from gateway.finetune.jobs_store import JobStore
from gateway.finetune.success import JobSuccess
from gateway.finetune.trial import record_checks
from tests.support.adapter_factory import write_adapter
from tests.unit.test_fine_tuning_routes import create, settle, upload
from tests.unit.test_routing import assert_openai_error
from tests.unit.test_training_jobs import messages, wait_status


@pytest.fixture
async def checks_trainer(tmp_path, monkeypatch) -> AsyncIterator[Callable]:
    """Starts a gateway's fine-tuning service on ``tests.unit.fake_checks_trainer``."""
    template = write_adapter(tmp_path / "template-adapter")
    monkeypatch.setenv("FAKE_TRAINER", json.dumps({"adapter": str(template)}))
    services = []

    def start(gateway) -> None:
        service = gateway.app.state.runtime.fine_tuning
        service.runner.trainer_module = "tests.unit.fake_checks_trainer"
        service.start()
        services.append(service)

    yield start
    for service in services:
        await service.stop()


def job_spec(gateway, job_id: str) -> dict:
    runs = gateway.app.state.runtime.settings.runs_dir
    return json.loads((runs / job_id / "job.json").read_text())


async def result_body(gateway, job: dict, index: int) -> dict:
    return json.loads((await gateway.get(f"/v1/files/{job['result_files'][index]}/content")).text)


async def test_a_trial_is_a_job_with_a_report_and_no_adapter(make_gateway, checks_trainer):
    gateway = make_gateway(finetune_trial_max_steps=7)
    checks_trainer(gateway)
    file_id = (await upload(gateway))["id"]
    job = await create(gateway, training_file=file_id, trial={"examples": 8})
    assert job["trial"] == {"examples": 8, "model": None} and job["trial_report"] is None
    assert not any(k.startswith("_") for k in job)
    job = await wait_status(gateway, job["id"], ("succeeded", "failed"))
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] is None
    assert job["trial_report"]["learns"] is True
    spec = job_spec(gateway, job["id"])
    assert spec["trial"]["examples"] == 8 and spec["trial"]["max_steps"] == 7
    assert spec["trial"]["full_base_dir"] == spec["base_dir"]
    assert len(job["result_files"]) == 2
    assert (await result_body(gateway, job, 1))["trial_report"]["learns"] is True
    said = await messages(gateway, job["id"])
    assert any(m.startswith("Trial finished: learns=true") for m in said)
    models = (await gateway.get("/v1/models")).json()["data"]
    assert not any(job["id"] in m["id"] for m in models)


async def test_trial_defaults_and_errors(make_gateway):
    gateway = make_gateway(finetune_trial_examples=20)
    file_id = (await upload(gateway))["id"]
    job = await create(gateway, training_file=file_id, trial=True)
    assert job["trial"] == {"examples": 20, "model": None}
    for trial, param in (
        ({"examples": 2}, "trial.examples"),
        ({"examples": "many"}, "trial.examples"),
        ({"model": "no-such-base"}, "trial.model"),
        ({"steps": 3}, "trial.steps"),
    ):
        response = await gateway.post(
            "/v1/fine_tuning/jobs", json={"model": "base", "training_file": file_id, "trial": trial}
        )
        assert_openai_error(response, 400)
        assert response.json()["error"]["param"] == param


async def test_every_job_reports_drift_repetition_and_small_set_held_out(
    make_gateway, checks_trainer
):
    gateway = make_gateway()
    checks_trainer(gateway)
    job = await create(gateway, training_file=(await upload(gateway))["id"])
    await settle(gateway, job["id"], ("queued", "running", "succeeded"))
    job = await wait_status(gateway, job["id"], ("succeeded", "failed"))
    assert job["status"] == "succeeded", job["error"]
    spec = job_spec(gateway, job["id"])
    assert spec["checks"] == {"small_set_fold": True}
    settings = gateway.app.state.runtime.settings
    assert spec["checks_cache_dir"] == str(settings.data_root / "cache" / "checks")
    events = (await gateway.get(f"/v1/fine_tunes/{job['id']}/events")).json()["data"]
    drift = [e for e in events if e["data"] and "drift" in e["data"]]
    assert drift and drift[0]["data"]["drift"]["kl"] == 0.21
    assert drift[0]["data"]["repetition"]["looping"] == 0
    held = [e for e in events if e["data"] and "held_out_check" in e["data"]]
    assert held and "leave-some-out" in held[0]["message"]
    samples = [e for e in events if e["data"] and "fine_tuned_answer" in e["data"]]
    assert samples and all(s["data"]["held_out"] and s["data"]["from_fold"] for s in samples)
    checks = await result_body(gateway, job, 1)
    assert checks["checks"]["held_out"]["curve"]


async def test_the_small_set_fold_can_be_turned_off(make_gateway, checks_trainer):
    gateway = make_gateway(finetune_small_set_holdout=False)
    checks_trainer(gateway)
    job = await create(gateway, training_file=(await upload(gateway))["id"])
    job = await wait_status(gateway, job["id"], ("succeeded", "failed"))
    assert job_spec(gateway, job["id"])["checks"] == {"small_set_fold": False}
    said = await messages(gateway, job["id"])
    assert not any("leave-some-out" in m for m in said)
    assert any(m.startswith("Drift from the base") for m in said)


async def test_the_checks_after_a_job_can_be_turned_off(make_gateway, checks_trainer):
    gateway = make_gateway(finetune_after_job_checks=False)
    checks_trainer(gateway)
    job = await create(gateway, training_file=(await upload(gateway))["id"])
    job = await wait_status(gateway, job["id"], ("succeeded", "failed"))
    assert job["status"] == "succeeded", job["error"]
    assert "checks" not in job_spec(gateway, job["id"])
    said = await messages(gateway, job["id"])
    assert not any(m.startswith("Drift from the base") or "leave-some-out" in m for m in said)
    assert len(job["result_files"]) == 1  # the step metrics only: no validation_checks.json


class RecordingFiles:
    """Stands in for the file store: ids of what was made and deleted."""

    def __init__(self, on_create: Callable[[], None] = lambda: None) -> None:
        self.made: list[str] = []
        self.deleted: list[str] = []
        self._on_create = on_create

    async def create_from_bytes(self, data: bytes, filename: str, purpose: str) -> dict:
        self.made.append(f"file-{len(self.made)}")
        self._on_create()
        return {"id": self.made[-1]}

    async def delete(self, file_id: str) -> None:
        self.deleted.append(file_id)


def running_job(tmp_path, **fields) -> JobStore:
    store = JobStore(open_database(tmp_path / "jobs.sqlite"))
    store.insert({"id": "ftjob-1", "status": "running", **fields})
    return store


async def test_a_trial_cancelled_as_it_finishes_keeps_no_results_files(tmp_path):
    store = running_job(tmp_path, trial={"examples": 8, "model": None})
    files = RecordingFiles(on_create=lambda: store.finish("ftjob-1", "cancelled"))
    success = JobSuccess(None, store, files, None, None, None, None)  # type: ignore[arg-type]
    result = {"trial_report": {"learns": True}, "checks": {"drift": {"kl": 0.1}}}
    await success.succeed("ftjob-1", result, [])
    assert store.get("ftjob-1")["status"] == "cancelled"
    assert files.made and sorted(files.deleted) == sorted(files.made)


async def test_a_check_the_trainer_did_not_measure_reads_n_a(tmp_path):
    store = running_job(tmp_path)
    checks = {"drift": {"prompts": 4}, "repetition": {"prompts": 4, "base_mean": 0.1}}
    await record_checks(store, RecordingFiles(), "ftjob-1", {"checks": checks})  # type: ignore[arg-type]
    [(_, event)] = store.events_since("ftjob-1", 0)
    assert "mean KL n/a nats/token" in event["message"]
    assert "prompts: n/a repeated" in event["message"] and "(base 10%)" in event["message"]
