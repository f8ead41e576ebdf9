"""Trial runs against full jobs, through the gateway and the SDK.

On one dataset: a trial (``extra_body={"trial": {}}``) and then the full job on the
same file, each timed from create to ``succeeded``. Two rows: the trial's wall time
against the full job's, and the trial's ``estimated_full_run_s`` against the full
job's measured wall time (how well the estimate predicted it).

vLLM is an instant stand-in here (registration and samples cost next to nothing),
so the full job's time is the trainer's: validation, training, the held-out fold of
a small set, and the checks after training.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.suites import Row, fake_upstream
from tests.support.gateway_process import REPO, start_gateway

DATA = REPO / "tests" / "data" / "trial_capitals.jsonl"
FINAL = ("succeeded", "failed", "cancelled")


async def trial(quick: bool) -> list[Row]:
    measured = await asyncio.to_thread(_trial_then_full)
    return [
        Row(
            "trial",
            "wall s, full job → trial",
            measured["full_s"],
            measured["trial_s"],
            "s",
            "about a minute (≤ 90 s)",
            measured["trial_s"] <= 90,
        ),
        Row(
            "trial",
            "full job s, measured → est.",
            measured["full_s"],
            measured["estimated_s"],
            "s",
            "within 0.67-1.5×",
            0.67 <= measured["estimated_s"] / measured["full_s"] <= 1.5,
        ),
    ]


def _trial_then_full() -> dict[str, float]:
    with fake_upstream() as upstream, tempfile.TemporaryDirectory(prefix="bench-trial-") as tmp:
        gateway = start_gateway(Path(tmp), "--vllm-url", upstream, "--no-llamacpp-enabled")
        try:
            gateway.wait_ready(120)
            client = gateway.client(timeout=600)
            with DATA.open("rb") as data:
                file_id = client.files.create(file=data, purpose="fine-tune").id
            trial_s, trial_job = _timed(client, file_id, {"trial": {}})
            full_s, _ = _timed(client, file_id, None)
            return {
                "trial_s": trial_s,
                "full_s": full_s,
                "estimated_s": trial_job.trial_report["estimated_full_run_s"],
            }
        finally:
            gateway.stop()


def _timed(client, file_id: str, extra: dict | None):  # noqa: ANN202
    started = time.monotonic()
    job = client.fine_tuning.jobs.create(
        model=EMBEDDED_MODEL_ID, training_file=file_id, extra_body=extra
    )
    while job.status not in FINAL:
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "succeeded":
        raise RuntimeError(f"benchmark job {job.id} ended {job.status}: {job.error}")
    return time.monotonic() - started, job
