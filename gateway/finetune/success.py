"""What a job does once its trainer has finished: register, preload, samples, results, export.

The adapter is registered under the job's id (``ft:<base>:<owner>:<suffix>:<job id>``),
preloaded on vLLM when a slot is free, shown beside the base on a few held-out
prompts (``samples``), and the step metrics are stored as the job's results file.
Exports the job asked for (``"export": ["gguf:q8_0"]``) start as merges.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.naming import DEFAULT_OWNER
from adapters.registry import RegisterRequest
from gateway.adapter_service import AdapterService
from gateway.errors import TunegateError
from gateway.finetune.files import FileStore
from gateway.finetune.jobs_store import JobStore, base_of
from gateway.finetune.merges import MergeService
from gateway.finetune.samples import SampleRecorder
from gateway.finetune.training import VALID_METRIC_FIELDS
from gateway.finetune.trial import finish_trial, record_checks
from gateway.settings import Settings

# (job id, code, message)
Fail = Callable[[str, str, str], None]


class JobSuccess:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: FileStore,
        adapters: AdapterService,
        merges: MergeService,
        samples: SampleRecorder,
        fail: Fail,
    ) -> None:
        self._settings = settings
        self._store = store
        self._files = files
        self._adapters = adapters
        self._merges = merges
        self._samples = samples
        self._fail = fail

    async def succeed(
        self, job_id: str, result: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> None:
        job = self._store.get(job_id)
        if job.get("trial"):  # a trial: its report, and no adapter to register (trial.py)
            changes = await finish_trial(
                self._store, self._files, job_id, result, metrics_csv(metrics)
            )
            self._store.update(
                job_id, status="succeeded", finished_at=int(time.time()), estimated_finish=None,
                **changes,
            )  # fmt: skip
            self._store.add_event(job_id, "The job has successfully completed.")
            return
        source = {"job_id": job_id}
        if job.get("_parent_adapter"):
            source["parent"] = job["_parent_adapter"]
        request = RegisterRequest(
            folder=Path(result["adapter_dir"]),
            base=base_of(job),
            suffix=job["_suffix"],
            owner=DEFAULT_OWNER,
            unique=job_id,
            source=source,
            dataset_sha256=self._files.sha256(job["training_file"]),
        )
        try:
            manifest = await self._adapters.register(
                request, extra_roots=(self._settings.runs_dir,)
            )
        except (TunegateError, AdapterError) as error:
            self._fail(
                job_id, "registration_failed", f"The trained adapter was refused: {error.message}"
            )
            return
        try:
            await self._adapters.preload(manifest.id)
        except TunegateError as error:
            self._store.add_event(
                job_id, f"The adapter will load on first use: {error.message}", level="warn"
            )
        checks = await record_checks(self._store, self._files, job_id, result)  # trial.py
        if not checks.samples_recorded:  # a small set's samples come from its held-out fold
            await self._samples.record(job_id, manifest.id, result.get("valid_loss"))
        results = await self._files.create_from_bytes(
            metrics_csv(metrics), "step_metrics.csv", "fine-tune-results"
        )
        self._store.update(
            job_id,
            status="succeeded",
            fine_tuned_model=manifest.id,
            finished_at=int(time.time()),
            trained_tokens=result.get("trained_tokens"),
            result_files=[results["id"], *checks.files],
            estimated_finish=None,
        )
        self._store.add_event(job_id, f"New fine-tuned model created: {manifest.id}")
        self._store.add_event(job_id, "The job has successfully completed.")
        for quantization in job.get("_export", []):
            merge = self._merges.request(manifest.id, quantization)
            self._store.add_event(
                job_id,
                f"Export to GGUF ({quantization}) started as {merge['id']}; the model will be "
                f"{merge['model']}.",
                data={"merge_id": merge["id"], "model": merge["model"]},
            )


def metrics_csv(metrics: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    columns = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    # DPO's reward metrics, in columns of their own when the job has them.
    rewards = [
        k
        for k in ("train_reward_accuracy", "train_reward_margin", *VALID_METRIC_FIELDS[1:])
        if any(row.get(k) is not None for row in metrics)
    ]
    writer = csv.writer(out)
    writer.writerow(columns + rewards)
    for row in metrics:
        writer.writerow(
            [
                row.get("step"),
                row.get("train_loss"),
                row.get("train_mean_token_accuracy"),
                row.get("valid_loss", ""),
                row.get("valid_mean_token_accuracy", ""),
                *(row.get(k, "") for k in rewards),
            ]
        )
    return out.getvalue().encode()
