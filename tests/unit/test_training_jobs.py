"""Slots, the queue, pause/resume, automatic resumes and checkpoint models, with a stand-in
trainer (``tests.unit.fake_trainer``) behind the real job machinery."""

from __future__ import annotations

import asyncio
import json

from gateway.finetune.slots import slots_from_settings
from gateway.settings import Settings
from tests.unit.test_fine_tuning_routes import create, settle, upload
from tests.unit.test_routing import assert_openai_error

FINAL = ("succeeded", "failed", "cancelled")


async def new_job(gateway, n_epochs: int = 1) -> str:
    file_id = (await upload(gateway))["id"]
    job = await create(gateway, training_file=file_id, hyperparameters={"n_epochs": n_epochs})
    await settle(gateway, job["id"], ("queued",))
    return job["id"]


async def wait_status(gateway, job_id: str, statuses, timeout_s: float = 30) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        job = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{job_id} is {job['status']}")


async def messages(gateway, job_id: str) -> list[str]:
    events = (await gateway.get(f"/v1/fine_tunes/{job_id}/events")).json()["data"]
    return [e["message"] for e in events]


def runs_of(gateway, job_id: str) -> list[dict]:
    runs = gateway.app.state.runtime.settings.runs_dir / job_id / "fake-runs.jsonl"
    return [json.loads(line) for line in runs.read_text().splitlines()]


def span(gateway, job_id: str) -> tuple[float, float]:
    runs = runs_of(gateway, job_id)
    return runs[0]["started"], runs[-1]["ended"]


async def test_one_slot_trains_one_job_at_a_time_and_tells_the_others_their_place(
    make_gateway, started
):
    gateway = make_gateway()
    first, second, third = [await new_job(gateway) for _ in range(3)]
    started(gateway)
    for job_id in (first, second, third):
        assert (await wait_status(gateway, job_id, FINAL))["status"] == "succeeded"
    assert span(gateway, first)[1] <= span(gateway, second)[0]
    assert span(gateway, second)[1] <= span(gateway, third)[0]
    third_said = await messages(gateway, third)
    assert any("number 2 in the queue (1 of 1 slot busy)" in m for m in third_said)
    assert any("number 1 in the queue" in m for m in third_said)  # moved up


async def test_two_slots_train_two_jobs_at_once(make_gateway, started, trainer_options):
    trainer_options(step_s=0.4)
    gateway = make_gateway(tuner_slots=[[1], [1]])
    first, second = [await new_job(gateway) for _ in range(2)]
    started(gateway)
    for job_id in (first, second):
        assert (await wait_status(gateway, job_id, FINAL))["status"] == "succeeded"
    (start_a, end_a), (start_b, end_b) = span(gateway, first), span(gateway, second)
    assert start_b < end_a and start_a < end_b
    said = " ".join(await messages(gateway, first) + await messages(gateway, second))
    assert "trainer slot 0 (cores 0)" in said and "trainer slot 1 (cores 1)" in said


async def test_pause_saves_a_checkpoint_and_resume_continues_from_it(
    make_gateway, started, trainer_options
):
    trainer_options(step_s=0.2)
    gateway = make_gateway()
    job_id = await new_job(gateway, n_epochs=3)
    started(gateway)
    await wait_status(gateway, job_id, ("running",))
    while not any(m.startswith("Step ") for m in await messages(gateway, job_id)):
        await asyncio.sleep(0.05)
    asked = (await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/pause")).json()
    assert asked["status"] == "running"  # until the trainer has saved and stopped
    paused = await wait_status(gateway, job_id, ("paused",) + FINAL)
    assert paused["status"] == "paused"
    step = runs_of(gateway, job_id)  # the trainer ran once and stopped
    assert len(step) == 1
    checkpoints = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")).json()["data"]
    paused_at = checkpoints[0]["step_number"]
    assert 0 < paused_at < 6
    assert_openai_error(await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/pause"), 400)

    resumed = (await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/resume")).json()
    assert resumed["status"] in ("queued", "running")
    assert (await wait_status(gateway, job_id, FINAL))["status"] == "succeeded"
    assert runs_of(gateway, job_id)[1]["from_step"] == paused_at
    said = await messages(gateway, job_id)
    assert f"Resumed from step {paused_at}, from its checkpoint." in said
    assert any(m.startswith(f"Fine-tuning job paused at step {paused_at}") for m in said)
    again = await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert_openai_error(again, 400, "job_not_paused")


async def test_a_queued_job_pauses_at_once_and_keeps_its_place_out_of_the_queue(
    make_gateway, started, trainer_options
):
    trainer_options(step_s=0.3)
    gateway = make_gateway()
    first, second = await new_job(gateway), await new_job(gateway)
    started(gateway)
    await wait_status(gateway, first, ("running",))
    assert (await gateway.post(f"/v1/fine_tuning/jobs/{second}/pause")).json()["status"] == "paused"
    assert (await wait_status(gateway, first, FINAL))["status"] == "succeeded"
    await asyncio.sleep(0.3)
    assert (await gateway.get(f"/v1/fine_tuning/jobs/{second}")).json()["status"] == "paused"
    await gateway.post(f"/v1/fine_tuning/jobs/{second}/resume")
    assert (await wait_status(gateway, second, FINAL))["status"] == "succeeded"


async def test_a_crashed_trainer_resumes_from_its_last_checkpoint(
    make_gateway, started, trainer_options
):
    trainer_options(crash_once_at=3)
    gateway = make_gateway()
    job_id = await new_job(gateway, n_epochs=2)
    started(gateway)
    assert (await wait_status(gateway, job_id, FINAL))["status"] == "succeeded"
    said = await messages(gateway, job_id)
    assert any("automatic resume 1 of 3" in m for m in said)
    assert "Resumed from step 2, from its checkpoint." in said
    assert [r.get("from_step") for r in runs_of(gateway, job_id) if "started" in r] == [0, 2]


async def test_automatic_resumes_are_bounded(make_gateway, started, trainer_options):
    trainer_options(crash_at=3)
    gateway = make_gateway(finetune_max_auto_resumes=1)
    job_id = await new_job(gateway, n_epochs=2)
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    assert job["status"] == "failed" and job["error"]["code"] == "too_many_interruptions"
    assert "after 1 automatic resume" in job["error"]["message"]
    assert "finetune_max_auto_resumes" in job["error"]["message"]
    assert len([r for r in runs_of(gateway, job_id) if "started" in r]) == 2


async def test_after_a_restart_running_jobs_resume_and_pausing_ones_pause(make_gateway, started):
    gateway = make_gateway(finetune_max_auto_resumes=2)
    store = gateway.app.state.runtime.fine_tuning.store
    killed, pausing, exhausted = [await new_job(gateway) for _ in range(3)]
    # As a gateway killed mid-training leaves them:
    store.transition(killed, ("queued",), "running", _runs=1)
    store.transition(pausing, ("queued",), "running", _runs=1, _pause_requested=True)
    store.transition(exhausted, ("queued",), "running", _runs=3, _auto_resumes=2)
    started(gateway)
    assert (await wait_status(gateway, killed, FINAL))["status"] == "succeeded"
    assert any(
        "the gateway restarted" in m and "automatic resume 1 of 2" in m
        for m in await messages(gateway, killed)
    )
    assert (await gateway.get(f"/v1/fine_tuning/jobs/{pausing}")).json()["status"] == "paused"
    failed = (await gateway.get(f"/v1/fine_tuning/jobs/{exhausted}")).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "too_many_interruptions"


async def test_checkpoints_are_servable_models_that_outlive_the_job_model(
    make_gateway, started, upstream
):
    gateway = make_gateway(finetune_checkpoint_models=2)
    job_id = await new_job(gateway, n_epochs=3)
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    assert job["status"] == "succeeded"
    listed = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")).json()["data"]
    models = [c["fine_tuned_model_checkpoint"] for c in listed]
    assert models == [f"{job['fine_tuned_model']}:ckpt-step-{n}" for n in (6, 4)]  # newest 2
    catalog = {m["id"]: m for m in (await gateway.get("/v1/models")).json()["data"]}
    assert f"{job['fine_tuned_model']}:ckpt-step-2" not in catalog
    checkpoint = catalog[models[1]]
    assert checkpoint["kind"] == "adapter" and checkpoint["parent"] == "base"
    assert checkpoint["source"] == {"job_id": job_id, "checkpoint_step": 4}

    deleted = await gateway.delete(f"/v1/models/{job['fine_tuned_model']}")
    assert deleted.json() == {"id": job["fine_tuned_model"], "object": "model", "deleted": True}
    reply = await gateway.post(
        "/v1/chat/completions",
        json={"model": models[1], "messages": [{"role": "user", "content": "Hi"}]},
    )
    assert reply.status_code == 200
    assert json.loads(upstream.seen[-1].content)["model"] == models[1]
    assert (await gateway.delete(f"/v1/models/{models[1]}")).status_code == 200
    assert_openai_error(await gateway.get(f"/v1/models/{models[1]}"), 404)
    assert_openai_error(await gateway.delete("/v1/models/base"), 400)


async def test_a_cancelled_job_leaves_no_checkpoint_model(make_gateway, started, trainer_options):
    trainer_options(step_s=0.3)
    gateway = make_gateway()
    job_id = await new_job(gateway, n_epochs=5)
    started(gateway)
    while "checkpoint" not in " ".join(await messages(gateway, job_id)).lower():
        await asyncio.sleep(0.05)
    assert (await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")).json()[
        "status"
    ] == "cancelled"
    assert not [m for m in (await gateway.get("/v1/models")).json()["data"] if job_id in m["id"]]


def test_slots_from_settings_give_each_rank_its_own_cores():
    assert [s.processes for s in slots_from_settings(Settings())] == [1]
    assert slots_from_settings(Settings()).pop().env() == {}
    cpu = slots_from_settings(Settings(tuner_slots=[[1, 1], 2]), cpu_count=4)
    assert [s.cpu_groups for s in cpu] == [((0,), (1,)), ((2, 3),)]
    assert cpu[0].env()["TUNEGATE_RANK_CPUS"] == "0;1" and cpu[0].processes == 2
    wrapped = slots_from_settings(Settings(tuner_slots=[[2], [2]]), cpu_count=2)
    assert [s.cpu_groups for s in wrapped] == [((0, 1),), ((0, 1),)]
    gpus = slots_from_settings(Settings(tuner_slots=[["0", "1"], "2"]))
    assert gpus[0].env() == {"CUDA_VISIBLE_DEVICES": "0,1"} and gpus[0].processes == 2
    assert gpus[1].describe() == "trainer slot 1 (GPU 2)"
