"""Validate before and after, on the real SmolLM2 through the official SDK: trial runs say
whether data teaches something, and every job reports drift and repetition."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import BASE
from tests.e2e.test_fine_tuning import FINAL, upload, wait_for
from tests.support.training import DATA

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trials(client) -> dict[str, object]:
    """One trial on a learnable set and one on an unlearnable one, queued together."""
    jobs = {
        name: client.fine_tuning.jobs.create(
            model=BASE,
            training_file=upload(client, DATA / f"trial_{name}.jsonl"),
            extra_body={"trial": {"examples": 32}},
        )
        for name in ("capitals", "random_codes")
    }
    return {name: wait_for(client, job.id, FINAL, timeout_s=600) for name, job in jobs.items()}


def test_a_trial_on_learnable_data_says_it_learns(trials):
    job = trials["capitals"]
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model is None  # a trial is a check, not a servable model
    report = job.trial_report
    assert report["learns"] is True, report
    assert report["held_out_loss_after"] < report["held_out_loss_before"]
    assert report["held_out_loss_after"] < report["control_held_out_loss_after"]
    assert report["held_out_examples"] == 8 and len(report["samples"]) == 3
    keys = {"prompt", "base_answer", "trial_answer", "expected"}
    assert all(keys <= set(sample) for sample in report["samples"])
    assert report["estimated_full_run_s"] > 0 and report["tokens_per_s"] > 0
    assert job.trial == {"examples": 32, "model": None}


def test_a_trial_on_random_codes_says_it_does_not_learn(trials):
    job = trials["random_codes"]
    assert job.status == "succeeded", job.error
    report = job.trial_report
    assert report["learns"] is False, report
    assert report["verdict"] in ("format_only", "nothing")


def test_ui_shows_the_trial_verdict_and_a_trial_button(gateway, trials, tmp_path):
    from tests.e2e.conftest import API_KEY
    from tests.e2e.test_ui import chromium, section

    dom = chromium(tmp_path, "--dump-dom", f"{gateway.url}/ui#key={API_KEY}")
    assert 'data-loaded="true"' in dom, dom[-2000:]
    learnable = section(dom, f'id="{trials["capitals"].id}"', '<div class="job"')
    assert 'class="learns-true"' in learnable and "trial adapter" in learnable
    assert 'class="drift"' in learnable
    codes = section(dom, f'id="{trials["random_codes"].id}"', '<div class="job"')
    assert 'class="learns-false"' in codes
