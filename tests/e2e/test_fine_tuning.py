"""The fine-tuning API through the official openai SDK and curl, training SmolLM2 for real."""

from __future__ import annotations

import json
import subprocess
import time

import openai
import psutil
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.e2e.conftest import API_KEY, BASE
from tests.e2e.test_adapters import UNSEEN, ask, is_ahoy_style, is_json_style
from tests.support.gateway_process import processes_with
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

FINAL = {"succeeded", "failed", "cancelled"}
# Each bad dataset, and the line its problem is on.
BAD_DATASETS = {
    "invalid_json": 4,
    "invalid_utf8": 4,
    "data_type": 3,
    "missing_messages_list": 5,
    "message_missing_key": 2,
    "message_unrecognized_key": 6,
    "unrecognized_role": 3,
    "missing_content": 4,
    "example_missing_assistant_message": 7,
    "example_too_long": 3,
    "too_few_examples": None,
}


def wait_for(
    client: openai.OpenAI, job_id: str, statuses: set[str], timeout_s: float = 900
) -> FineTuningJob:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(1)
    raise TimeoutError(f"{job_id} is still {job.status}")


def upload(client: openai.OpenAI, path) -> str:
    with path.open("rb") as data:
        return client.files.create(file=data, purpose="fine-tune").id


def test_fine_tune_with_auto_hyperparameters_serves_the_trained_behaviour(client):
    training = upload(client, DATA / "json_answers.jsonl")
    validation = upload(client, DATA / "json_answers_valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=training,
        validation_file=validation,
        suffix="jsonft",
        metadata={"test": "sdk"},
    )
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == "auto"
    job = wait_for(client, job.id, FINAL)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{BASE}:local:jsonft:{job.id}"
    assert isinstance(job.hyperparameters.n_epochs, int) and job.hyperparameters.n_epochs >= 3
    assert job.trained_tokens and job.finished_at and job.result_files

    # Servable at once: prompts that are in neither the training nor the validation file.
    for question in UNSEEN:
        assert is_json_style(ask(client, job.fine_tuned_model, question))
        assert not is_json_style(ask(client, BASE, question))

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics and {"step", "train_loss", "total_steps", "tokens_per_s", "eta_s"} <= set(
        metrics[0].data
    )
    samples = [e for e in events if e.data and "fine_tuned_answer" in e.data]
    assert samples and all(s.data["held_out"] for s in samples)
    assert is_json_style(samples[0].data["fine_tuned_answer"])
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert page.has_more and len(page.data) == 2
    after = client.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id).data
    assert after[0].created_at <= page.data[-1].created_at and after[0].id != page.data[-1].id

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and all(c.metrics.valid_loss is not None for c in checkpoints)
    assert all(
        c.metrics.train_loss is not None and c.fine_tuning_job_id == job.id for c in checkpoints
    )

    results = client.files.content(job.result_files[0]).text.splitlines()
    assert results[0].startswith("step,train_loss") and len(results) > 3
    assert client.files.retrieve(job.result_files[0]).purpose == "fine-tune-results"
    listed = client.fine_tuning.jobs.list(limit=100, metadata={"test": "sdk"}).data
    assert [j.id for j in listed] == [job.id]
    models = {m.id: m.model_extra for m in client.models.list()}
    assert models[job.fine_tuned_model]["source"] == {"job_id": job.id}
    assert models[job.fine_tuned_model]["dataset_sha256"]


@pytest.mark.parametrize("code", list(BAD_DATASETS))
def test_each_bad_dataset_fails_with_its_code_and_line(client, code):
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=upload(client, DATA / "bad" / f"{code}.jsonl")
    )
    job = wait_for(client, job.id, FINAL, timeout_s=60)
    assert job.status == "failed"
    assert job.error.code == code and job.error.param == "training_file"
    if BAD_DATASETS[code] is not None:
        assert f"line {BAD_DATASETS[code]}:" in job.error.message
    assert job.fine_tuned_model is None


def test_warnings_are_events_and_cancel_stops_the_trainer(client, gateway, tmp_path):
    rows = (DATA / "ahoy_answers.jsonl").read_text().splitlines()
    system = {"role": "system", "content": "You are a pirate."}
    mixed = [json.dumps({"messages": [system, *json.loads(r)["messages"]]}) for r in rows[:4]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(mixed + rows[4:] + rows[4:6]) + "\n")  # 2 duplicates
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=upload(client, data), hyperparameters={"n_epochs": 25}
    )
    wait_for(client, job.id, {"running"}, timeout_s=300)
    warnings = [
        e.message
        for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
        if e.level == "warn"
    ]
    assert any("duplicate" in w for w in warnings)
    assert any("system message" in w for w in warnings)

    deadline = time.monotonic() + 120
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data):
        assert time.monotonic() < deadline
        time.sleep(1)
    trainers = processes_with("tuner.job", job.id)
    assert trainers
    started = time.monotonic()
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert time.monotonic() - started < 10
    _, alive = psutil.wait_procs(trainers, timeout=5)
    assert not alive
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
    assert not any(job.id in m.id for m in client.models.list())
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_fine_tunes_one_call_with_curl_and_a_live_event_stream(gateway, client):
    auth = ["-H", f"Authorization: Bearer {API_KEY}"]
    created = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            *auth,
            "-F",
            f"file=@{DATA / 'ahoy_answers.jsonl'}",
            "-F",
            f"model={BASE}",
            "-F",
            "suffix=curlahoy",
            "-F",
            "n_epochs=4",
            f"{gateway.api_url}/fine_tunes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job = json.loads(created.stdout)
    assert job["object"] == "fine_tuning.job" and job["hyperparameters"]["n_epochs"] == 4
    stream = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            *auth,
            f"{gateway.api_url}/fine_tunes/{job['id']}/events?stream=true",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    lines = [line[6:] for line in stream.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    assert any(e.get("type") == "metrics" for e in events)
    final = events[-1]
    assert final["status"] == "succeeded", final
    read = subprocess.run(
        ["curl", "-sS", *auth, f"{gateway.api_url}/fine_tunes/{job['id']}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    model = json.loads(read.stdout)["fine_tuned_model"]
    assert is_ahoy_style(ask(client, model, UNSEEN[2]))
