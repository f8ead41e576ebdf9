"""Files and fine-tuning routes: wire format, validation and errors (no training here)."""

from __future__ import annotations

import asyncio
import json

import pytest
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

from tests.support.gateway_process import REPO
from tests.unit.test_routing import assert_openai_error

DATA = REPO / "tests" / "data"
GOOD = (DATA / "json_answers.jsonl").read_bytes()


async def upload(gateway, content: bytes = GOOD, purpose: str = "fine-tune") -> dict:
    response = await gateway.post(
        "/v1/files", files={"file": ("data.jsonl", content)}, data={"purpose": purpose}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def create(gateway, **body) -> dict:
    response = await gateway.post("/v1/fine_tuning/jobs", json={"model": "base", **body})
    assert response.status_code == 200, response.text
    return response.json()


async def settle(gateway, job_id: str, statuses=("queued", "failed")) -> dict:
    for _ in range(200):
        job = (await gateway.get(f"/v1/fine_tuning/jobs/{job_id}")).json()
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.02)
    raise TimeoutError(job_id)


async def test_files_lifecycle_in_the_sdk_shape(gateway):
    created = await upload(gateway)
    FileObject.model_validate(created)
    assert (created["purpose"], created["bytes"], created["filename"]) == (
        "fine-tune",
        len(GOOD),
        "data.jsonl",
    )
    listed = (await gateway.get("/v1/files", params={"purpose": "fine-tune"})).json()
    assert [f["id"] for f in listed["data"]] == [created["id"]] and listed["has_more"] is False
    assert (await gateway.get(f"/v1/files/{created['id']}/content")).content == GOOD
    deleted = (await gateway.delete(f"/v1/files/{created['id']}")).json()
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    assert_openai_error(await gateway.get(f"/v1/files/{created['id']}"), 404, "file_not_found")
    assert_openai_error(await gateway.get("/v1/files/%2e%2e"), 400)


async def test_file_upload_errors(make_gateway):
    gateway = make_gateway(max_upload_bytes=100)
    assert_openai_error(
        await gateway.post(
            "/v1/files", files={"file": ("d.jsonl", GOOD)}, data={"purpose": "fine-tune"}
        ),
        413,
    )
    small = make_gateway()
    bad_purpose = await small.post(
        "/v1/files", files={"file": ("d", b"x")}, data={"purpose": "magic"}
    )
    assert assert_openai_error(bad_purpose, 400)["param"] == "purpose"
    no_file = await small.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"other": ("d", b"x")}
    )
    assert assert_openai_error(no_file, 400)["param"] == "file"
    assert_openai_error(await small.post("/v1/files", json={"purpose": "fine-tune"}), 400)


async def test_a_file_of_exactly_the_upload_limit_goes_through(make_gateway):
    """The limit is the file's: the multipart form around it does not count against it."""
    limit = 64 * 1024
    gateway = make_gateway(max_upload_bytes=limit)
    at_limit = await gateway.post(
        "/v1/files", files={"file": ("d.bin", b"x" * limit)}, data={"purpose": "user_data"}
    )
    assert at_limit.status_code == 200 and at_limit.json()["bytes"] == limit, at_limit.text
    over = await gateway.post(
        "/v1/files", files={"file": ("d.bin", b"x" * (limit + 1))}, data={"purpose": "user_data"}
    )
    assert_openai_error(over, 413)


async def test_a_job_is_validated_then_queued_with_resolved_hyperparameters(gateway):
    file_id = (await upload(gateway))["id"]
    job = await create(gateway, training_file=file_id, suffix="My Bot", metadata={"team": "a"})
    FineTuningJob.model_validate(job)
    assert job["status"] == "validating_files" and job["hyperparameters"]["n_epochs"] == "auto"
    job = await settle(gateway, job["id"])
    assert job["status"] == "queued"
    assert (job["hyperparameters"]["n_epochs"], job["hyperparameters"]["batch_size"]) == (9, 4)
    assert job["user_provided_suffix"] == "My Bot"
    events = (await gateway.get(f"/v1/fine_tuning/jobs/{job['id']}/events")).json()
    for event in events["data"]:
        FineTuningJobEvent.model_validate(event)
    assert "Files validated: 12 training" in events["data"][0]["message"]
    cancelled = (await gateway.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    again = await gateway.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert_openai_error(again, 400, "job_finished")


async def test_hyperparameters_under_method_supervised(gateway):
    file_id = (await upload(gateway))["id"]
    method = {
        "type": "supervised",
        "supervised": {"hyperparameters": {"n_epochs": 2, "lora_rank": 4}},
    }
    job = await settle(gateway, (await create(gateway, training_file=file_id, method=method))["id"])
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["lora_rank"] == 4
    assert job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2


async def test_a_bad_dataset_fails_the_job_with_code_param_and_line(gateway):
    file_id = (await upload(gateway, (DATA / "bad" / "unrecognized_role.jsonl").read_bytes()))["id"]
    job = await settle(gateway, (await create(gateway, training_file=file_id))["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "unrecognized_role" and job["error"]["param"] == "training_file"
    assert "line 3:" in job["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "training_file": "file-x"}, 400, "model"),
        ({"training_file": "file-missing"}, 404, "training_file"),
        (
            {"training_file": "FILE", "hyperparameters": {"n_epochs": 0}},
            400,
            "hyperparameters.n_epochs",
        ),
        (
            {"training_file": "FILE", "hyperparameters": {"n_epochs": "many"}},
            400,
            "hyperparameters.n_epochs",
        ),
        (
            {"training_file": "FILE", "hyperparameters": {"lora_rank": 64}},
            400,
            "hyperparameters.lora_rank",
        ),
        ({"training_file": "FILE", "method": {"type": "reinforcement"}}, 400, "method.type"),
        ({"training_file": "FILE", "method": {"type": "magic"}}, 400, "method.type"),
        (
            {
                "training_file": "FILE",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}},
            },
            400,
            "method.supervised.hyperparameters.beta",
        ),
        ({"training_file": "FILE", "suffix": "x" * 65}, 400, "suffix"),
        ({"training_file": "FILE", "validation_file": "file-missing"}, 404, "validation_file"),
    ],
)
async def test_bad_job_requests(gateway, body, status, param):
    file_id = (await upload(gateway))["id"]
    body = {k: (file_id if v == "FILE" else v) for k, v in body.items()}
    response = await gateway.post("/v1/fine_tuning/jobs", json={"model": "base", **body})
    assert assert_openai_error(response, status)["param"] == param


async def test_job_list_pagination_and_metadata_filter(gateway):
    file_id = (await upload(gateway))["id"]
    ids = [
        (await create(gateway, training_file=file_id, metadata={"n": str(i)}))["id"]
        for i in range(3)
    ]
    first = (await gateway.get("/v1/fine_tuning/jobs", params={"limit": 2})).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = (
        await gateway.get(
            "/v1/fine_tuning/jobs", params={"limit": 2, "after": first["data"][-1]["id"]}
        )
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False
    only = (await gateway.get("/v1/fine_tuning/jobs", params={"metadata[n]": "1"})).json()
    assert [j["id"] for j in only["data"]] == [ids[1]]
    assert_openai_error(await gateway.get("/v1/fine_tuning/jobs/ftjob-nope"), 404, "job_not_found")
    assert_openai_error(await gateway.get("/v1/fine_tuning/jobs", params={"limit": 0}), 400)
    for job_id in ids:
        await settle(gateway, job_id)


async def test_fine_tunes_one_call(gateway):
    response = await gateway.post(
        "/v1/fine_tunes",
        files={"file": ("d.jsonl", GOOD)},
        data={
            "model": "base",
            "suffix": "curl",
            "n_epochs": "2",
            "learning_rate_multiplier": "0.5",
        },
    )
    assert response.status_code == 200, response.text
    job = await settle(gateway, response.json()["id"])
    assert (
        job["hyperparameters"]["n_epochs"] == 2
        and job["hyperparameters"]["learning_rate_multiplier"] == 0.5
    )
    assert (await gateway.get(f"/v1/fine_tunes/{job['id']}")).json()["id"] == job["id"]
    listed = (await gateway.get(f"/v1/fine_tunes/{job['id']}/events")).json()["data"]
    assert listed[0]["message"].startswith("Created fine-tuning job")
    bad = await gateway.post(
        "/v1/fine_tunes", files={"file": ("d", GOOD)}, data={"model": "base", "n_epochs": "x"}
    )
    assert_openai_error(bad, 400)
    await gateway.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    stream = await gateway.get(f"/v1/fine_tunes/{job['id']}/events", params={"stream": "true"})
    lines = [row[6:] for row in stream.text.splitlines() if row.startswith("data: ")]
    assert lines[-1] == "[DONE]" and json.loads(lines[-2])["status"] == "cancelled"
