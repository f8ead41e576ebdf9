"""The /ui page in headless Chromium, against a real gateway with a finished job."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.e2e.conftest import API_KEY, BASE
from tests.e2e.test_fine_tuning import upload, wait_for
from tests.support.gateway_process import REPO
from tests.support.training import DATA

pytestmark = pytest.mark.e2e

OUTPUT = REPO / "test-output"
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


@pytest.fixture
def finished_job(client) -> str:
    """A succeeded job with validation data (the fine-tuning tests leave one; else train one)."""
    for job in client.fine_tuning.jobs.list(limit=100).data:
        if job.status == "succeeded" and job.validation_file:
            return job.id
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=upload(client, DATA / "json_answers.jsonl"),
        validation_file=upload(client, DATA / "json_answers_valid.jsonl"),
        hyperparameters={"n_epochs": 3},
    )
    return wait_for(client, job.id, {"succeeded"}).id


def test_ui_draws_loss_curves_and_lineage(gateway, finished_job, tmp_path):
    page = f"{gateway.url}/ui#key={API_KEY}"
    dom = chromium(tmp_path, "--dump-dom", page)
    assert 'data-loaded="true"' in dom, dom[-2000:]
    start = dom.index(f'id="{finished_job}"')
    end = dom.find('<div class="job"', start)
    job_section = dom[start : end if end != -1 else None]
    assert job_section.count('class="train-point"') >= 3
    assert job_section.count('class="valid-point"') >= 1
    assert "held out" in job_section and "fine-tuned" in job_section
    assert f"<code>{BASE}</code>" in dom  # the models table, with lineage
    OUTPUT.mkdir(exist_ok=True)
    chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={OUTPUT / 'ui.png'}", page)
    assert (OUTPUT / "ui.png").stat().st_size > 10_000


def test_ui_needs_no_key_but_its_data_does(gateway):
    with gateway.http() as http:
        page = http.get("/ui", headers={"Authorization": ""})
        assert page.status_code == 200 and "<svg" not in page.text  # no data in the page itself
        assert http.get("/v1/models", headers={"Authorization": ""}).status_code == 401
