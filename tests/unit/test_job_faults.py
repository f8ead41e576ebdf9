"""Faults and races in the life of a job and of a merge, driven on purpose.

Each race is held open at a named point of a stage (``gateway.finetune.hooks``)
by a gate the test releases, so the cancel, delete or stop lands exactly
there; faults (a full disk, a database that cannot be written) are raised at
the one seam where the code writes. Every test checks the final status and
code, the files left behind, and that no trainer keeps running.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.finetune.database import open_database
from gateway.finetune.job_states import TERMINAL, TRANSITIONS, IllegalTransitionError
from gateway.finetune.jobs_store import JobStore
from gateway.finetune.merges import merged_model_id
from gateway.finetune.success import final_model_id
from tests.support.gateway_process import processes_with
from tests.unit.test_fine_tuning_routes import create, settle, upload
from tests.unit.test_training_jobs import FINAL, messages, runs_of, wait_status

WAIT_S = 30


class Gate:
    """A hook that holds a stage at its point until the test releases it."""

    def __init__(self, then: Any = None) -> None:
        self.reached = asyncio.Event()
        self.released = asyncio.Event()
        self.context: dict[str, Any] = {}
        self._then = then

    async def __call__(self, **context: Any) -> None:
        self.context = context
        self.reached.set()
        await self.released.wait()
        if self._then is not None:
            await self._then(**context)

    async def wait(self) -> dict[str, Any]:
        await asyncio.wait_for(self.reached.wait(), WAIT_S)
        return self.context


def service_of(gateway):
    return gateway.app.state.runtime.fine_tuning


def trainers_of(job_id: str) -> list:
    return processes_with("tests.unit.fake_trainer", job_id)


async def idle(gateway) -> None:
    """Until no stage of the gateway's jobs is still at work."""
    service = service_of(gateway)
    for _ in range(WAIT_S * 20):
        busy = service.scheduler.running() or service.validation._tasks or service._tasks
        if not busy:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the fine-tuning service did not go idle")


async def model_ids(gateway) -> set[str]:
    return {m["id"] for m in (await gateway.get("/v1/models")).json()["data"]}


async def job_with_file(gateway, n_epochs: int = 1, **body: Any) -> tuple[str, str]:
    file_id = (await upload(gateway))["id"]
    job = await create(
        gateway, training_file=file_id, hyperparameters={"n_epochs": n_epochs}, **body
    )
    return job["id"], file_id


def disk_full(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


# --- the state machine ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> JobStore:
    store = JobStore(open_database(tmp_path / "jobs.sqlite"))
    store.insert({"id": "ftjob-1", "status": "validating_files"})
    return store


def test_a_transition_is_a_compare_and_set(store, caplog):
    assert store.transition("ftjob-1", ("validating_files",), "queued", plan=1)
    assert store.get("ftjob-1") == {"id": "ftjob-1", "status": "queued", "plan": 1}
    caplog.set_level("INFO", logger="gateway.finetune.jobs_store")
    assert not store.transition("ftjob-1", ("validating_files",), "queued", plan=2)
    assert store.get("ftjob-1")["plan"] == 1  # refused: nothing of it written
    assert "refused, it is queued" in caplog.text


def test_cancel_wins_over_a_later_failure_or_success(store):
    store.transition("ftjob-1", ("validating_files",), "queued")
    store.transition("ftjob-1", ("queued",), "running")
    assert store.finish("ftjob-1", "cancelled")
    assert not store.fail("ftjob-1", "training_failed", "late")
    assert not store.finish("ftjob-1", "succeeded", fine_tuned_model="x")
    job = store.get("ftjob-1")
    assert job["status"] == "cancelled" and job.get("error") is None
    assert "fine_tuned_model" not in job


def test_illegal_transitions_and_status_writes_outside_transition_are_refused(store):
    with pytest.raises(IllegalTransitionError):
        store.transition("ftjob-1", ("validating_files",), "succeeded")
    with pytest.raises(ValueError):
        store.update("ftjob-1", status="running")
    assert all(not TRANSITIONS[status] for status in TERMINAL)


# --- validation -------------------------------------------------------------------------------


async def test_a_full_disk_while_the_run_folder_is_written_fails_the_job(
    make_gateway, started, monkeypatch
):
    gateway = make_gateway()
    service = service_of(gateway)
    monkeypatch.setattr(service.run_folder, "write_file", disk_full)
    job_id, _ = await job_with_file(gateway)
    job = await settle(gateway, job_id, FINAL)
    assert job["status"] == "failed" and job["error"]["code"] == "disk_full"
    assert job["error"]["message"] == "Validating the files failed: the disk is full."
    assert not (service.run_folder.folder(job_id)).exists()  # nothing half-written left
    await idle(gateway)
    assert not trainers_of(job_id)


async def test_an_unexpected_error_in_validation_fails_the_job_without_paths(
    make_gateway, monkeypatch
):
    gateway = make_gateway()
    service = service_of(gateway)

    def broken(*_: Any) -> None:
        raise RuntimeError("/secret/place/train.jsonl is odd")

    monkeypatch.setattr(service.run_folder, "write_file", broken)
    job_id, _ = await job_with_file(gateway)
    job = await settle(gateway, job_id, FINAL)
    assert job["status"] == "failed" and job["error"]["code"] == "validation_failed"
    assert "/secret" not in job["error"]["message"]
    assert "internal error" in job["error"]["message"]
    assert not service.run_folder.folder(job_id).exists()


async def test_a_training_file_deleted_before_validation_fails_the_job(make_gateway, started):
    gateway = make_gateway()
    service = service_of(gateway)
    file_id = (await upload(gateway))["id"]
    service.files.path(file_id).unlink()  # gone from the disk, still listed
    job = await create(gateway, training_file=file_id)
    failed = await settle(gateway, job["id"], FINAL)
    assert failed["status"] == "failed" and failed["error"]["code"] == "file_not_found"
    assert failed["error"]["param"] == "training_file"
    assert not service.run_folder.folder(job["id"]).exists()


async def test_a_job_validating_at_a_restart_whose_file_was_deleted_fails(make_gateway, started):
    first = make_gateway()
    gate = Gate()
    service_of(first).hooks.at("validated", gate)
    job_id, file_id = await job_with_file(first)
    await gate.wait()  # as a gateway stopped while it checked the files leaves it
    await service_of(first).stop()
    assert (await first.delete(f"/v1/files/{file_id}")).status_code == 200

    second = make_gateway()
    started(second)
    job = await wait_status(second, job_id, FINAL)
    assert job["status"] == "failed" and job["error"]["code"] == "file_not_found"
    gate.released.set()


async def test_a_cancel_during_validation_stays_cancelled(make_gateway, started):
    gateway = make_gateway()
    service = service_of(gateway)
    gate = Gate()
    service.hooks.at("validated", gate)
    job_id, _ = await job_with_file(gateway)
    started(gateway)
    await gate.wait()
    assert (await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")).json()[
        "status"
    ] == "cancelled"
    gate.released.set()
    await idle(gateway)
    job = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert job["status"] == "cancelled"
    assert not service.run_folder.folder(job_id).exists()
    assert not trainers_of(job_id)


async def test_a_cancel_while_the_trainer_starts_stops_it(make_gateway, started, monkeypatch):
    """The cancel comes while the trainer's process is being started (it has no pid yet):
    it is stopped as soon as it exists, not left to train a cancelled job to its end."""
    from gateway.finetune import trainer_process

    spawning, go_on = asyncio.Event(), asyncio.Event()
    spawn = trainer_process.spawn_trainer

    async def slow_spawn(*args: Any, **kwargs: Any) -> Any:
        spawning.set()
        await go_on.wait()
        return await spawn(*args, **kwargs)

    monkeypatch.setattr(trainer_process, "spawn_trainer", slow_spawn)
    gateway = make_gateway()
    job_id, _ = await job_with_file(gateway, n_epochs=3)
    started(gateway)
    await asyncio.wait_for(spawning.wait(), WAIT_S)
    cancelled = await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    go_on.set()
    await idle(gateway)
    job = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert job["status"] == "cancelled"
    assert not trainers_of(job_id)
    events = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}/events")).json()["data"]
    assert not [e for e in events if e["type"] == "metrics"]  # it never trained


async def test_a_cancel_while_a_checkpoint_is_registered_leaves_no_checkpoint_model(
    make_gateway, started, trainer_options, monkeypatch
):
    """The cancel comes while the run registers a checkpoint its trainer announced: the
    cancel goes on once that is done, so the job's checkpoint models it then removes
    include this one, and what the stopped trainer said last is not handled."""
    trainer_options(step_s=0.2)
    gateway = make_gateway()
    service = service_of(gateway)
    job_id, _ = await job_with_file(gateway, n_epochs=3)
    gate = Gate()
    register = service.checkpoint_models.register

    async def held_register(*args: Any, **kwargs: Any) -> Any:
        await gate()
        return await register(*args, **kwargs)

    monkeypatch.setattr(service.checkpoint_models, "register", held_register)
    started(gateway)
    await gate.wait()
    cancel = asyncio.create_task(gateway.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"))
    while trainers_of(job_id) or service.store.get(job_id)["status"] != "cancelled":
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # time enough for a cancel that does not wait to finish
    gate.released.set()
    assert (await asyncio.wait_for(cancel, WAIT_S)).json()["status"] == "cancelled"
    await idle(gateway)
    assert not [m for m in await model_ids(gateway) if job_id in m]
    assert (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}")).json()["status"] == "cancelled"


# --- training ---------------------------------------------------------------------------------


async def test_an_error_in_the_run_loop_stops_the_trainer_and_frees_the_slot(
    make_gateway, started, trainer_options, monkeypatch
):
    trainer_options(step_s=0.2)
    gateway = make_gateway()
    service = service_of(gateway)
    doomed, _ = await job_with_file(gateway, n_epochs=3, suffix="doomed")
    await settle(gateway, doomed, ("queued",))
    add_checkpoint = service.store.add_checkpoint

    def database_full(job_id: str, *args: Any) -> bool:
        if job_id == doomed:
            raise sqlite3.OperationalError("database or disk is full")
        return add_checkpoint(job_id, *args)

    monkeypatch.setattr(service.store, "add_checkpoint", database_full)
    started(gateway)
    await wait_status(gateway, doomed, ("running",))
    pid = None
    while pid is None:  # the trainer that must not outlive the failure
        pid = next((p.pid for p in trainers_of(doomed)), None)
        await asyncio.sleep(0.02)
    job = await wait_status(gateway, doomed, FINAL)
    assert job["status"] == "failed" and job["error"]["code"] == "disk_full"
    assert job["error"]["message"] == "Training failed: the disk is full."
    assert not trainers_of(doomed)
    assert not _alive(pid)  # stopped, not left training in a slot given to the next job
    next_job, _ = await job_with_file(gateway, suffix="next")  # the slot is free again
    assert (await wait_status(gateway, next_job, FINAL))["status"] == "succeeded"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_training_file_deleted_mid_run_still_succeeds(make_gateway, started):
    gateway = make_gateway()
    service = service_of(gateway)

    async def delete_the_file(job_id: str) -> None:
        file_id = service.store.get(job_id)["training_file"]
        assert (await gateway.delete(f"/v1/files/{file_id}")).status_code == 200

    service.hooks.at("trainer_finished", delete_the_file)
    job_id, _ = await job_with_file(gateway)
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    assert job["status"] == "succeeded", job["error"]
    manifest = gateway.app.state.runtime.adapters.get(job["fine_tuned_model"])
    assert manifest.dataset_sha256 is None and manifest.source["job_id"] == job_id
    assert not trainers_of(job_id)


# --- success ----------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["registered", "before_succeeded"])
async def test_a_cancel_during_success_wins_and_removes_the_adapter(make_gateway, started, point):
    gateway = make_gateway()
    service = service_of(gateway)
    gate = Gate()
    service.hooks.at(point, gate)
    job_id, _ = await job_with_file(gateway)
    started(gateway)
    adapter_id = (await gate.wait())["adapter_id"]
    assert adapter_id in await model_ids(gateway)  # registered and served
    cancelled = (await gateway.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    gate.released.set()
    await idle(gateway)
    job = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert job["status"] == "cancelled" and job["fine_tuned_model"] is None
    assert adapter_id not in await model_ids(gateway)
    assert not (gateway.app.state.runtime.settings.adapters_dir / adapter_id).exists()
    results = (await gateway.get("/v1/files", params={"purpose": "fine-tune-results"})).json()
    assert results["data"] == []  # the results file made for it is gone too
    assert "The job has successfully completed." not in await messages(gateway, job_id)
    assert not trainers_of(job_id)


async def test_a_full_disk_after_registration_fails_the_job_and_removes_its_adapter(
    make_gateway, started, monkeypatch
):
    gateway = make_gateway()
    service = service_of(gateway)
    files = service.success._files
    create_from_bytes = files.create_from_bytes

    async def results_on_a_full_disk(data: bytes, filename: str, purpose: str) -> Any:
        if purpose == "fine-tune-results":
            disk_full()
        return await create_from_bytes(data, filename, purpose)

    monkeypatch.setattr(files, "create_from_bytes", results_on_a_full_disk)
    job_id, _ = await job_with_file(gateway)
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    await idle(gateway)
    assert job["status"] == "failed" and job["error"]["code"] == "disk_full"
    adapter_id = final_model_id(service.store.get(job_id))  # its checkpoints stay, as ever
    assert adapter_id not in await model_ids(gateway)
    assert adapter_id not in {m.id for m in gateway.app.state.runtime.adapters.registry.list()}
    assert not trainers_of(job_id)


async def test_a_failure_after_a_cancel_leaves_the_job_cancelled(make_gateway, started):
    gateway = make_gateway()
    service = service_of(gateway)

    async def cancel_then_break(job_id: str, adapter_id: str) -> None:
        await service.cancel(job_id)
        raise RuntimeError("a late failure")

    service.hooks.at("registered", cancel_then_break)
    job_id, _ = await job_with_file(gateway)
    started(gateway)
    await wait_status(gateway, job_id, FINAL)
    await idle(gateway)
    job = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
    assert job["status"] == "cancelled" and job["error"] is None
    assert not [m for m in await model_ids(gateway) if job_id in m]
    assert not trainers_of(job_id)


@pytest.mark.parametrize("how", ["sigterm", "kill"])
async def test_a_gateway_stopped_during_registration_finishes_it_after_a_restart(
    make_gateway, started, how
):
    first = make_gateway()
    gate = Gate()
    service_of(first).hooks.at("registered", gate)
    job_id, _ = await job_with_file(first)
    started(first)
    adapter_id = (await gate.wait())["adapter_id"]
    if how == "sigterm":
        await service_of(first).stop()  # what the gateway does on SIGTERM
    # "kill": the first gateway does nothing more; its stage stays where it was.

    second = make_gateway()
    started(second)
    job = await wait_status(second, job_id, FINAL)
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == adapter_id
    assert adapter_id in await model_ids(second)
    said = await messages(second, job_id)
    assert f"The adapter {adapter_id} was registered already, by this job." in said
    assert [r for r in runs_of(second, job_id) if "started" in r][1:] == []  # not retrained
    adapters = second.app.state.runtime.settings.adapters_dir
    finals = [p.name for p in adapters.iterdir() if job_id in p.name and "ckpt" not in p.name]
    assert finals == [adapter_id]  # registered once
    assert not trainers_of(job_id)


# --- export and merges ------------------------------------------------------------------------


@pytest.fixture
def fake_export(monkeypatch) -> None:
    monkeypatch.delenv("FAKE_EXPORT", raising=False)


def merges_of(gateway):
    merges = gateway.app.state.runtime.merges
    merges.export_module = "tests.unit.fake_export"
    return merges


async def merge_of_job(gateway, job_id: str) -> dict[str, Any]:
    merges = gateway.app.state.runtime.merges
    for _ in range(WAIT_S * 20):
        found = [
            m for m in merges.list() if job_id in m["adapter"] and m["status"] not in
            ("queued", "running")
        ]  # fmt: skip
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise TimeoutError("no merge ended")


def merge_files(gateway, model: str) -> list[str]:
    folder = gateway.app.state.runtime.merges.folder
    return sorted(p.name for p in folder.iterdir() if model in p.name) if folder.is_dir() else []


async def test_an_export_on_a_full_disk_fails_its_merge_and_removes_its_files(
    make_gateway, started, fake_export, monkeypatch
):
    gateway = make_gateway()
    merges = merges_of(gateway)
    monkeypatch.setattr(merges, "write_manifest", disk_full)
    job_id, _ = await job_with_file(gateway, export=["gguf"])
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    assert job["status"] == "succeeded"  # the export is the merge's, not the job's
    merge = await merge_of_job(gateway, job_id)
    assert merge["status"] == "failed" and merge["error"]["code"] == "disk_full"
    model = merged_model_id(job["fine_tuned_model"], "q8_0")
    assert merge_files(gateway, model) == []  # no GGUF, no manifest, no partial file
    assert model not in await model_ids(gateway)
    assert not processes_with("tests.unit.fake_export", model)


async def test_a_merge_whose_adapter_is_deleted_fails_and_removes_its_gguf(
    make_gateway, started, fake_export
):
    gateway = make_gateway()
    merges = merges_of(gateway)

    async def delete_the_adapter(merge_id: str, adapter_id: str) -> None:
        assert merges.get(merge_id)["status"] == "running"
        assert (await gateway.delete(f"/v1/models/{adapter_id}")).status_code == 200

    merges.hooks.at("merge_exported", delete_the_adapter)
    job_id, _ = await job_with_file(gateway, export=["gguf:q4_k_m"])
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    merge = await merge_of_job(gateway, job_id)
    assert merge["status"] == "failed" and merge["error"]["code"] == "adapter_deleted"
    model = merged_model_id(job["fine_tuned_model"], "q4_k_m")
    assert merge_files(gateway, model) == []
    assert model not in await model_ids(gateway)
    work = gateway.app.state.runtime.settings.runs_dir / merge["id"] / "work"
    assert not work.exists()


async def test_a_merge_ending_while_its_adapter_drains_for_a_delete_is_adapter_deleted(
    make_gateway, started, fake_export
):
    gateway = make_gateway()
    merges = merges_of(gateway)

    async def delete_begins(merge_id: str, adapter_id: str) -> None:
        # A delete takes the catalog row first; the registry entry stays while it drains.
        gateway.app.state.runtime.catalog.remove(adapter_id)

    merges.hooks.at("merge_exported", delete_begins)
    job_id, _ = await job_with_file(gateway, export=["gguf:q4_k_m"])
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    merge = await merge_of_job(gateway, job_id)
    assert merge["status"] == "failed" and merge["error"]["code"] == "adapter_deleted"
    model = merged_model_id(job["fine_tuned_model"], "q4_k_m")
    assert merge_files(gateway, model) == []
    assert model not in await model_ids(gateway)


async def test_a_failed_export_leaves_no_partial_file(make_gateway, started, monkeypatch):
    monkeypatch.setenv("FAKE_EXPORT", "fail")
    gateway = make_gateway()
    merges_of(gateway)
    job_id, _ = await job_with_file(gateway, export=["gguf"])
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    merge = await merge_of_job(gateway, job_id)
    assert merge["status"] == "failed" and merge["error"]["code"] == "export_failed"
    assert "the converter stopped" in merge["error"]["message"]
    assert merge_files(gateway, merged_model_id(job["fine_tuned_model"], "q8_0")) == []


async def test_a_torn_merge_manifest_is_moved_aside_and_start_up_goes_on(gateway, caplog):
    merges = gateway.app.state.runtime.merges
    merges.folder.mkdir(parents=True, exist_ok=True)
    torn = merges.folder / "ft:base:local:bot:ftjob-1:gguf-q8_0.json"
    torn.write_text('{"id": "ft:base:local:bot:ftjob-1:gguf-q8_0", "adap')
    merges.start()
    assert not torn.exists()
    aside = [p.name for p in merges.folder.iterdir() if ".json.corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].startswith(torn.name)
    assert "moved the unreadable manifest" in caplog.text


async def test_a_torn_adapter_manifest_is_moved_aside_and_the_others_load(
    make_gateway, started, caplog
):
    gateway = make_gateway()
    job_id, _ = await job_with_file(gateway)
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    adapters_dir = gateway.app.state.runtime.settings.adapters_dir
    manifest = adapters_dir / job["fine_tuned_model"] / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])  # torn
    registry = gateway.app.state.runtime.adapters.registry
    loaded = [m.id for m in registry.load()]
    assert job["fine_tuned_model"] not in loaded
    assert not manifest.exists()
    assert [p.name for p in manifest.parent.iterdir() if p.name.startswith("manifest.json.")]
    assert "moved the unreadable manifest" in caplog.text


# --- a real full disk: a small tmpfs under the runs folder -----------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    runs = tmp_path / "runs"
    runs.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(runs)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root: the injected full disk covers this case")
    try:
        yield runs
    finally:
        subprocess.run(["umount", "-l", str(runs)], check=False)


def fill(folder: Path) -> None:
    with (folder / "filler").open("wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


@pytest.mark.parametrize("when", ["validation", "training"])
async def test_a_real_full_disk_fails_the_job_with_disk_full(
    make_gateway, started, small_disk, when
):
    gateway = make_gateway()
    if when == "validation":
        fill(small_disk)
    job_id, _ = await job_with_file(gateway)
    if when == "training":
        await settle(gateway, job_id, ("queued",))
        fill(small_disk)
    started(gateway)
    job = await wait_status(gateway, job_id, FINAL)
    assert job["status"] == "failed" and job["error"]["code"] == "disk_full", job["error"]
    await idle(gateway)
    assert not trainers_of(job_id)
    if when == "validation":
        assert not (small_disk / job_id).exists()
    assert not [m for m in await model_ids(gateway) if job_id in m]


def test_every_active_status_can_fail_or_be_cancelled():
    for status, targets in TRANSITIONS.items():
        if status not in TERMINAL:
            assert {"failed", "cancelled"} <= targets, status
    assert {s for s, targets in TRANSITIONS.items() if "succeeded" in targets} == {"running"}
