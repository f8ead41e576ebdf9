"""What a job does once its trainer has finished: register, preload, samples, results, export.

The adapter is registered under the job's id (``ft:<base>:<owner>:<suffix>:<job id>``),
preloaded on vLLM when a slot is free, shown beside the base on a few held-out
prompts (``samples``), and the step metrics are stored as the job's results file.
Then the job becomes ``succeeded`` (``running → succeeded``, compare and set),
and the exports it asked for (``"export": ["gguf:q8_0"]``) start as merges.

Success is idempotent: a gateway stopped (SIGTERM, or killed) during it runs
it again at the next start, and an adapter that exists already under the job's
id, registered by this same job, counts as registered (it is live and may be
serving: it is kept as it is, even if a re-run of the trainer wrote other
weights, which is logged).

Cancel wins: a job cancelled while it registers, loads or samples stays
cancelled, and the adapter it registered is removed again (a cancelled job
leaves nothing servable, as its checkpoint models are removed too); the
results file made for it is deleted.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError, AdapterExistsError, AdapterNotFoundError
from adapters.manifest import AdapterManifest
from adapters.naming import DEFAULT_OWNER, make_adapter_id
from adapters.registry import RegisterRequest
from adapters.validation import WEIGHTS_FILE
from gateway.adapter_service import AdapterService
from gateway.errors import TunegateError
from gateway.finetune.files import FileStore
from gateway.finetune.hooks import StageHooks
from gateway.finetune.jobs_store import JobStore, base_of
from gateway.finetune.merges import MergeService
from gateway.finetune.samples import SampleRecorder
from gateway.finetune.stage_guard import describe
from gateway.finetune.training import VALID_METRIC_FIELDS
from gateway.finetune.trial import finish_trial, record_checks
from gateway.settings import Settings

log = logging.getLogger(__name__)


def final_model_id(job: dict[str, Any]) -> str:
    """The id a job's adapter is registered under."""
    return str(make_adapter_id(base_of(job), job["_suffix"], job["id"], DEFAULT_OWNER))


class JobSuccess:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: FileStore,
        adapters: AdapterService,
        merges: MergeService,
        samples: SampleRecorder,
        hooks: StageHooks,
    ) -> None:
        self._settings = settings
        self._store = store
        self._files = files
        self._adapters = adapters
        self._merges = merges
        self._samples = samples
        self._hooks = hooks

    async def succeed(
        self, job_id: str, result: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> None:
        job = self._store.get(job_id)
        if job["status"] != "running":
            return  # cancelled after its trainer finished
        if job.get("trial"):  # a trial: its report, and no adapter to register (trial.py)
            changes = await finish_trial(
                self._store, self._files, job_id, result, metrics_csv(metrics)
            )
            if self._store.finish(job_id, "succeeded", **changes):
                self._store.add_event(job_id, "The job has successfully completed.")
            else:  # cancelled meanwhile: no files for a job that shows none
                for file_id in changes["result_files"]:
                    await self._files.delete(file_id)
            return
        try:
            manifest = await self._register(job, result)
        except (TunegateError, AdapterError) as error:
            self._store.fail(
                job_id, "registration_failed", f"The trained adapter was refused: {error.message}"
            )
            return
        await self._hooks.reach("registered", job_id=job_id, adapter_id=manifest.id)
        if await self._withdrawn_if_cancelled(job_id):
            return
        try:
            await self._adapters.preload(manifest.id)
        except (TunegateError, AdapterError) as error:
            self._store.add_event(
                job_id, f"The adapter will load on first use: {error.message}", level="warn"
            )
        try:
            checks = await record_checks(self._store, self._files, job_id, result)  # trial.py
            if not checks.samples_recorded:  # a small set's samples come from its held-out fold
                await self._samples.record(job_id, manifest.id, result.get("valid_loss"))
            results = await self._files.create_from_bytes(
                metrics_csv(metrics), "step_metrics.csv", "fine-tune-results"
            )
            await self._hooks.reach("before_succeeded", job_id=job_id, adapter_id=manifest.id)
        except Exception:
            # The stage guard fails the job (a full disk, say): a failed job serves no model.
            await self.remove_adapter_of(job_id, "the job failed")
            raise
        if not self._store.finish(
            job_id,
            "succeeded",
            fine_tuned_model=manifest.id,
            trained_tokens=result.get("trained_tokens"),
            result_files=[results["id"], *checks.files],
        ):
            for file_id in (results["id"], *checks.files):  # made for a job now cancelled
                await self._files.delete(file_id)
            await self._withdrawn_if_cancelled(job_id)
            return
        self._store.add_event(job_id, f"New fine-tuned model created: {manifest.id}")
        self._store.add_event(job_id, "The job has successfully completed.")
        self._start_exports(job, manifest.id)

    async def _register(self, job: dict[str, Any], result: dict[str, Any]) -> AdapterManifest:
        source = {"job_id": job["id"]}
        if job.get("_parent_adapter"):
            source["parent"] = job["_parent_adapter"]
        folder = Path(result["adapter_dir"])
        request = RegisterRequest(
            folder=folder,
            base=base_of(job),
            suffix=job["_suffix"],
            owner=DEFAULT_OWNER,
            unique=job["id"],
            source=source,
            dataset_sha256=self._dataset_sha256(job),
        )
        try:
            return await self._adapters.register(request, extra_roots=(self._settings.runs_dir,))
        except AdapterExistsError:
            existing = self._registered_by(job["id"])
            if existing is None:
                raise
            weights = await asyncio.to_thread(_sha256_or_none, folder / WEIGHTS_FILE)
            if existing.weights_sha256 != weights:
                log.warning("job %s: keeping its registered adapter, whose weights differ from "
                            "the re-run's", job["id"])  # fmt: skip
            self._store.add_event(
                job["id"], f"The adapter {existing.id} was registered already, by this job."
            )
            return existing

    def _registered_by(self, job_id: str) -> AdapterManifest | None:
        """The job's adapter if it is registered and comes from this job, else None."""
        try:
            manifest = self._adapters.registry.get(final_model_id(self._store.get(job_id)))
        except AdapterError:
            return None
        return manifest if manifest.source.get("job_id") == job_id else None

    async def _withdrawn_if_cancelled(self, job_id: str) -> bool:
        """A job cancelled during success: remove the adapter it registered; True if so."""
        if self._store.get(job_id)["status"] != "cancelled":
            return False
        await self.remove_adapter_of(job_id)
        return True

    async def remove_adapter_of(self, job_id: str, why: str = "the job was cancelled") -> None:
        """Remove the job's adapter if it registered one (a cancelled job leaves none)."""
        manifest = self._registered_by(job_id)
        if manifest is None:
            return
        try:
            await self._adapters.remove(manifest.id)
        except AdapterNotFoundError:
            return  # removed meanwhile
        self._store.add_event(job_id, f"The adapter {manifest.id} was removed: {why}.")

    def _start_exports(self, job: dict[str, Any], model_id: str) -> None:
        """The export stage: a failure to start one is an error event; the job stays done."""
        for quantization in job.get("_export", []):
            try:
                merge = self._merges.request(model_id, quantization)
            except Exception as error:
                log.exception("job %s: export %s did not start", job["id"], quantization)
                code, message = describe("export", error)
                self._store.add_event(
                    job["id"], message, level="error",
                    data={"code": code, "quantization": quantization},
                )  # fmt: skip
                continue
            self._store.add_event(
                job["id"],
                f"Export to GGUF ({quantization}) started as {merge['id']}; the model will be "
                f"{merge['model']}.",
                data={"merge_id": merge["id"], "model": merge["model"]},
            )

    def _dataset_sha256(self, job: dict[str, Any]) -> str | None:
        try:
            return self._files.sha256(job["training_file"])
        except TunegateError:
            return None  # the file was deleted since; the lineage keeps the job id


def _sha256_or_none(path: Path) -> str | None:
    try:
        digest = hashlib.sha256()
        with path.open("rb") as reader:
            while chunk := reader.read(1024 * 1024):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None


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
