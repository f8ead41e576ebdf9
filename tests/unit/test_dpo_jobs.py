"""DPO jobs through the routes, over fake engines: wire format, plan, data checks, continuing
an adapter (no training here)."""

from __future__ import annotations

import json

import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.support.adapter_factory import write_adapter
from tests.unit.test_adapter_routes import register
from tests.unit.test_fine_tuning_routes import DATA, create, settle, upload
from tests.unit.test_routing import assert_openai_error

PAIRS = (DATA / "short_answer_pairs.jsonl").read_bytes()
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}


@pytest.fixture
def imports(tmp_path):
    folder = tmp_path / "imports"
    folder.mkdir()
    return folder


@pytest.fixture
def gateway(make_gateway, imports):
    return make_gateway(adapter_import_dirs=[imports])


def run_dir(gateway, job_id: str):
    return gateway.app.state.runtime.settings.runs_dir / job_id


async def test_a_dpo_job_is_planned_with_its_own_defaults_in_openais_shape(gateway):
    file_id = (await upload(gateway, PAIRS))["id"]
    job = await create(gateway, training_file=file_id, method=DPO, suffix="short")
    assert FineTuningJob.model_validate(job).method.type == "dpo"
    job = await settle(gateway, job["id"])
    assert job["status"] == "queued", job["error"]
    parsed = FineTuningJob.model_validate(job)
    hyperparameters = parsed.method.dpo.hyperparameters
    assert (hyperparameters.beta, hyperparameters.n_epochs, hyperparameters.batch_size) == (
        0.1,
        3,
        8,
    )
    assert parsed.method.supervised is None
    spec = json.loads((run_dir(gateway, job["id"]) / "job.json").read_text())
    assert spec["method"] == "dpo" and spec["learning_rate"] == pytest.approx(5e-4)
    assert spec["method_options"] == {"beta": 0.1, "sft_weight": 1.0}
    assert spec["start_adapter"] is None
    events = (await gateway.get(f"/v1/fine_tuning/jobs/{job['id']}/events")).json()["data"]
    assert "40 training and 0 validation pairs" in events[0]["message"]
    assert "beta 0.1" in events[0]["message"]


async def test_dpo_hyperparameters_are_checked(gateway):
    file_id = (await upload(gateway, PAIRS))["id"]
    bad = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}
    response = await gateway.post(
        "/v1/fine_tuning/jobs", json={"model": "base", "training_file": file_id, "method": bad}
    )
    assert assert_openai_error(response, 400)["param"] == "method.dpo.hyperparameters.beta"


async def test_reinforcement_is_refused_with_a_message_that_says_so(gateway):
    file_id = (await upload(gateway, PAIRS))["id"]
    response = await gateway.post(
        "/v1/fine_tuning/jobs",
        json={"model": "base", "training_file": file_id, "method": {"type": "reinforcement"}},
    )
    error = assert_openai_error(response, 400, "unsupported_method")
    assert "Reinforcement fine-tuning" in error["message"] and "'dpo'" in error["message"]


async def test_a_bad_pair_fails_the_job_with_its_code_and_line(gateway):
    lines = PAIRS.decode().splitlines()
    broken = json.loads(lines[5])
    broken["non_preferred_output"] = broken["preferred_output"]
    lines[5] = json.dumps(broken)
    file_id = (await upload(gateway, ("\n".join(lines) + "\n").encode()))["id"]
    job = await settle(gateway, (await create(gateway, training_file=file_id, method=DPO))["id"])
    assert job["status"] == "failed"
    assert (job["error"]["code"], job["error"]["param"]) == ("identical_outputs", "training_file")
    assert "line 6:" in job["error"]["message"]


async def test_chat_data_for_a_dpo_job_fails_with_a_hint(gateway):
    file_id = (await upload(gateway))["id"]  # chat examples
    job = await settle(gateway, (await create(gateway, training_file=file_id, method=DPO))["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "data_type"
    assert "a DPO job takes preference pairs" in job["error"]["message"]


async def test_dpo_continues_an_adapter_of_the_gateway(gateway, imports):
    parent = await register(gateway, write_adapter(imports / "a"), suffix="sft")
    file_id = (await upload(gateway, PAIRS))["id"]
    job = await create(gateway, model="sft", training_file=file_id, method=DPO, suffix="pref")
    assert job["model"] == parent["id"]
    job = await settle(gateway, job["id"])
    assert job["status"] == "queued", job["error"]
    # The LoRA keeps the parent's shape.
    assert (job["hyperparameters"]["lora_rank"], job["hyperparameters"]["lora_alpha"]) == (4, 8)
    folder = run_dir(gateway, job["id"])
    spec = json.loads((folder / "job.json").read_text())
    assert spec["start_adapter"] == str(folder / "start_adapter")
    copied = sorted(p.name for p in (folder / "start_adapter").iterdir())
    assert copied == ["adapter_config.json", "adapter_model.safetensors"]
    # The copy is the run's own: deleting the parent now does not touch it.
    assert (await gateway.delete("/v1/adapters/sft")).status_code == 200
    assert (folder / "start_adapter" / "adapter_model.safetensors").is_file()

    events = (await gateway.get(f"/v1/fine_tuning/jobs/{job['id']}/events")).json()["data"]
    assert f"continuing from {parent['id']}" in events[0]["message"]


async def test_a_continued_adapter_keeps_its_lora_shape(gateway, imports):
    await register(gateway, write_adapter(imports / "a"), suffix="sft")
    file_id = (await upload(gateway, PAIRS))["id"]
    method = {"type": "dpo", "dpo": {"hyperparameters": {"lora_rank": 8}}}
    response = await gateway.post(
        "/v1/fine_tuning/jobs", json={"model": "sft", "training_file": file_id, "method": method}
    )
    error = assert_openai_error(response, 400)
    assert error["param"] == "hyperparameters.lora_rank" and "lora_rank 4" in error["message"]
    unknown = await gateway.post(
        "/v1/fine_tuning/jobs", json={"model": "ft:nope", "training_file": file_id}
    )
    assert assert_openai_error(unknown, 404, "model_not_found")["param"] == "model"
    gguf = await gateway.post(
        "/v1/fine_tuning/jobs", json={"model": "base-gguf", "training_file": file_id}
    )
    assert assert_openai_error(gguf, 400, "model_not_available")["param"] == "model"


async def test_fine_tunes_one_call_takes_the_method_and_beta(gateway):
    response = await gateway.post(
        "/v1/fine_tunes",
        files={"file": ("pairs.jsonl", PAIRS)},
        data={"model": "base", "method": "dpo", "beta": "0.2", "n_epochs": "2"},
    )
    assert response.status_code == 200, response.text
    job = await settle(gateway, response.json()["id"])
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert job["hyperparameters"]["n_epochs"] == 2
