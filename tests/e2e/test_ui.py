"""The /ui page in headless Chromium, against a real gateway with a finished job."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
from urllib.parse import quote, urlencode

import pytest

from tests.e2e.conftest import API_KEY, BASE
from tests.e2e.test_adapters import is_json_style
from tests.e2e.test_fine_tuning import upload, wait_for
from tests.e2e.test_merges import merge, wait_merge
from tests.support.gateway_process import REPO
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

OUTPUT = REPO / "test-output"
ANSWER = re.compile(r'<div class="answer" data-model="([^"]*)">([^<]*)</div>')
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


def chromium(tmp_path, *args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Debian's chromium is needed (make test installs it)"
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


# /ui lists this many of the latest jobs (gateway/ui/index.html).
UI_JOBS = 20


@pytest.fixture
def finished_job(client) -> str:
    """A succeeded supervised job with validation data among those /ui lists (the
    fine-tuning tests leave one; else train one)."""
    for job in client.fine_tuning.jobs.list(limit=UI_JOBS).data:
        if job.status == "succeeded" and job.validation_file and job.method.type == "supervised":
            return job.id
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=upload(client, DATA / "json_answers.jsonl"),
        validation_file=upload(client, DATA / "json_answers_valid.jsonl"),
        hyperparameters={"n_epochs": 3},
    )
    return wait_for(client, job.id, {"succeeded"}).id


@pytest.fixture
def merged_of_job(gateway, client, finished_job) -> tuple[str, str]:
    """The finished job's adapter and a merged model of it (merged now if none is yet)."""
    adapter = client.fine_tuning.jobs.retrieve(finished_job).fine_tuned_model
    for model in client.models.list():
        if model.model_extra["kind"] == "merged" and model.model_extra["parent"] == adapter:
            return adapter, model.id
    with gateway.http() as http:
        done = wait_merge(http, merge(http, adapter, "q8_0")["id"])
    assert done["status"] == "succeeded", done
    return adapter, done["model"]


def link_to(target: str) -> str:
    return f'href="#{quote(target, safe="")}"'


def section(dom: str, start_marker: str, end_marker: str) -> str:
    start = dom.index(start_marker)
    end = dom.find(end_marker, start + len(start_marker))
    return dom[start : end if end != -1 else None]


def test_ui_draws_loss_curves_and_lineage(gateway, finished_job, merged_of_job, tmp_path):
    adapter, merged = merged_of_job
    page = f"{gateway.url}/ui#key={API_KEY}"
    dom = chromium(tmp_path, "--dump-dom", page)
    assert 'data-loaded="true"' in dom, dom[-2000:]
    job_section = section(dom, f'id="{finished_job}"', '<div class="job"')
    assert job_section.count('class="train-point"') >= 3
    assert job_section.count('class="valid-point"') >= 1
    assert "held out" in job_section and "fine-tuned" in job_section
    # The drift box of a job's checks: test_trial's UI test (the shared gateway skips them).
    assert 'class="trial-button"' in job_section
    # job → adapter → merged model, as words and links to the models' rows
    assert "→ adapter" in job_section and "→ merged" in job_section
    assert link_to(f"model-{adapter}") in job_section and link_to(f"model-{merged}") in job_section
    adapter_row = section(dom, f'<tr id="model-{adapter}"', "</tr>")
    assert "trained by job" in adapter_row and link_to(finished_job) in adapter_row
    assert link_to(f"model-{BASE}") in adapter_row
    merged_row = section(dom, f'<tr id="model-{merged}"', "</tr>")
    assert "merged into" in merged_row and link_to(f"model-{adapter}") in merged_row
    assert '"job_id"' not in dom and "{&quot;" not in dom  # no raw JSON
    assert f"<code>{BASE}</code>" in dom
    OUTPUT.mkdir(exist_ok=True)
    chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={OUTPUT / 'ui.png'}", page)
    assert (OUTPUT / "ui.png").stat().st_size > 10_000


def test_ui_asks_the_base_and_the_fine_tuned_model_side_by_side(
    gateway, client, finished_job, tmp_path
):
    tuned = client.fine_tuning.jobs.retrieve(finished_job).fine_tuned_model
    prompt = "What is the capital of France? Answer in one word."
    ask = urlencode({"key": API_KEY, "compare": tuned, "prompt": prompt})
    dom = chromium(tmp_path, "--dump-dom", f"{gateway.url}/ui#{ask}")
    assert 'data-compared="true"' in dom, dom[-2000:]
    answers = {model: html.unescape(text) for model, text in ANSWER.findall(dom)}
    assert set(answers) == {BASE, tuned}, answers
    assert "paris" in answers[BASE].lower() and not is_json_style(answers[BASE])
    assert is_json_style(answers[tuned])  # the trained behaviour, next to the base's
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "ui-compare.png"
    chromium(tmp_path, "--window-size=1280,1000", f"--screenshot={shot}", f"{gateway.url}/ui#{ask}")
    assert shot.stat().st_size > 10_000


def test_ui_needs_no_key_but_its_data_does(gateway):
    with gateway.http() as http:
        page = http.get("/ui", headers={"Authorization": ""})
        assert page.status_code == 200 and "<svg" not in page.text  # no data in the page itself
        assert http.get("/v1/models", headers={"Authorization": ""}).status_code == 401
