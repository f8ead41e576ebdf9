"""The job fields OpenAI code sends beside the data: seed, metadata, integrations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from openai._qs import Querystring
from openai.types.fine_tuning import FineTuningJob

from tests.unit.test_fine_tuning_routes import create, settle, upload
from tests.unit.test_routing import assert_openai_error
from tuner.integrations import report_to

WANDB = {"type": "wandb", "wandb": {"project": "moving-in", "name": "run-1", "tags": ["a", "b"]}}


async def refused(gateway, file_id: str, **body) -> dict:
    response = await gateway.post(
        "/v1/fine_tuning/jobs", json={"model": "base", "training_file": file_id, **body}
    )
    return assert_openai_error(response, 400)


async def test_a_job_returns_its_seed_given_or_generated(gateway):
    file_id = (await upload(gateway))["id"]
    given = await create(gateway, training_file=file_id, seed=1234)
    generated = await create(gateway, training_file=file_id)
    assert given["seed"] == 1234
    assert isinstance(generated["seed"], int) and 0 <= generated["seed"] < 2**31
    assert (await gateway.get(f"/v1/fine_tuning/jobs/{generated['id']}")).json()["seed"] == (
        generated["seed"]
    )
    error = await refused(gateway, file_id, seed=-1)
    assert error["param"] == "seed"


async def test_metadata_is_stored_returned_and_filters_the_list_as_the_sdk_sends_it(gateway):
    file_id = (await upload(gateway))["id"]
    full = {f"k{i}": "v" * 512 for i in range(16)}  # OpenAI's limits, exactly
    job = await create(gateway, training_file=file_id, metadata=full)
    other = await create(gateway, training_file=file_id, metadata={"team": "search"})
    FineTuningJob.model_validate(job)
    assert job["metadata"] == full
    assert (await gateway.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()["metadata"] == full
    # The openai SDK's wire form of jobs.list(metadata={"team": "search"}).
    query = Querystring().stringify({"metadata": {"team": "search"}})
    assert query == "metadata%5Bteam%5D=search"
    listed = (await gateway.get(f"/v1/fine_tuning/jobs?{query}")).json()["data"]
    assert [j["id"] for j in listed] == [other["id"]]


@pytest.mark.parametrize(
    ("metadata", "param", "code", "words"),
    [
        (
            {f"k{i}": "v" for i in range(17)},
            "metadata",
            "object_above_max_properties",
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            "properties, but got an object with 17 properties instead.",
        ),
        (
            {"k" * 65: "v"},
            "metadata",
            "string_above_max_length",
            "Expected a key with maximum length 64, but got a key with length 65 instead.",
        ),
        (
            {"note": "v" * 513},
            "metadata.note",
            "string_above_max_length",
            "Invalid 'metadata.note': string too long. Expected a string with maximum length "
            "512, but got a string with length 513 instead.",
        ),
        (
            {"n": 3},
            "metadata.n",
            "invalid_type",
            "Invalid type for 'metadata.n': expected a string, but got an integer instead.",
        ),
        (
            ["a"],
            "metadata",
            "invalid_type",
            "Invalid type for 'metadata': expected an object, but got an array instead.",
        ),
    ],
)
async def test_metadata_past_openai_limits_is_refused_in_openai_words(
    gateway, metadata, param, code, words
):
    file_id = (await upload(gateway))["id"]
    error = await refused(gateway, file_id, metadata=metadata)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert words in error["message"]


@pytest.mark.parametrize(
    ("integrations", "param", "code"),
    [
        ([{"type": "comet"}], "integrations[0].type", "invalid_value"),
        ([{"wandb": {"project": "p"}}], "integrations[0].type", "missing_required_parameter"),
        ([{"type": "wandb"}], "integrations[0].wandb", "missing_required_parameter"),
        (
            [{"type": "wandb", "wandb": {}}],
            "integrations[0].wandb.project",
            "missing_required_parameter",
        ),
        (
            [{"type": "wandb", "wandb": {"project": "p", "tags": "a"}}],
            "integrations[0].wandb.tags",
            "invalid_type",
        ),
        ({"type": "wandb"}, "integrations", "invalid_type"),
    ],
)
async def test_malformed_integrations_are_refused(gateway, integrations, param, code):
    file_id = (await upload(gateway))["id"]
    error = await refused(gateway, file_id, integrations=integrations)
    assert (error["param"], error["code"]) == (param, code)
    if code == "invalid_value":
        assert error["message"] == "Invalid value: 'comet'. Supported values are: 'wandb'."


async def test_wandb_without_the_package_is_400_saying_what_to_install(gateway, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    file_id = (await upload(gateway))["id"]
    error = await refused(gateway, file_id, integrations=[WANDB])
    assert error["code"] == "integration_not_available"
    assert "pip install wandb" in error["message"]


async def test_wandb_with_the_package_reaches_the_trainer_offline(gateway, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "wandb" else real(name, *a),
    )
    file_id = (await upload(gateway))["id"]
    job = await create(gateway, training_file=file_id, integrations=[WANDB])
    shown = {"project": "moving-in", "name": "run-1", "entity": None, "tags": ["a", "b"]}
    assert job["integrations"] == [{"type": "wandb", "wandb": shown}]
    FineTuningJob.model_validate(job)
    # The job's run folder carries them to the trainer, which reports to W&B offline.
    await settle(gateway, job["id"])
    run_dir = tmp_path / "runs" / job["id"]
    if not (run_dir / "job.json").is_file():  # written when a slot takes the job
        run_dir.mkdir(parents=True)
        (run_dir / "job.json").write_text(json.dumps({"integrations": job["integrations"]}))
    env: dict[str, str] = {}
    assert report_to(run_dir, env) == ["wandb"]
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(run_dir)
    assert (env["WANDB_PROJECT"], env["WANDB_NAME"], env["WANDB_TAGS"]) == (
        "moving-in",
        "run-1",
        "a,b",
    )
    assert "WANDB_ENTITY" not in env


def test_the_users_wandb_environment_wins(tmp_path: Path):
    (tmp_path / "job.json").write_text(json.dumps({"integrations": [WANDB]}))
    env = {"WANDB_MODE": "online", "WANDB_DIR": "/elsewhere"}
    assert report_to(tmp_path, env) == ["wandb"]
    assert (env["WANDB_MODE"], env["WANDB_DIR"]) == ("online", "/elsewhere")
    (tmp_path / "job.json").write_text(json.dumps({"seed": 1}))
    assert report_to(tmp_path, {}) == []


@pytest.mark.parametrize(
    ("body", "param", "code", "message"),
    [
        (
            {"seed": -1},
            "seed",
            "integer_below_min_value",
            "Invalid 'seed': integer below minimum value. Expected a value >= 0, "
            "but got -1 instead.",
        ),
        (
            {"seed": 2**31},
            "seed",
            "integer_above_max_value",
            f"Invalid 'seed': integer above maximum value. Expected a value <= {2**31 - 1}, "
            f"but got {2**31} instead.",
        ),
        (
            {"seed": "abc"},
            "seed",
            "invalid_type",
            "Invalid type for 'seed': expected an integer, but got a string instead.",
        ),
        (
            {"suffix": "s" * 65},
            "suffix",
            "string_above_max_length",
            "Invalid 'suffix': string too long. Expected a string with maximum length 64, "
            "but got a string with length 65 instead.",
        ),
    ],
)
async def test_seed_and_suffix_out_of_bounds_are_refused_in_openai_words(
    gateway, body, param, code, message
):
    file_id = (await upload(gateway))["id"]
    error = await refused(gateway, file_id, **body)
    assert (error["param"], error["code"], error["message"]) == (param, code, message)
