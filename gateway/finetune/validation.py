"""The ``validating_files`` stage of a job: check its files, write its run folder, queue it.

Runs as a task of its own per job (the checks run in a thread); a job still
validating when the gateway stopped is validated again at the next start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from adapters.errors import AdapterNotFoundError
from adapters.manifest import AdapterManifest
from gateway.adapter_service import AdapterService
from gateway.finetune.file_checks import DatasetRejected, JobFileChecks
from gateway.finetune.jobs_store import JobStore
from gateway.finetune.lora_shape import lora_of
from gateway.finetune.methods import job_method
from gateway.finetune.run_folder import RunFolderWriter

# (job id, code, message, param)
Fail = Callable[[str, str, str, str | None], None]


class JobValidation:
    def __init__(
        self,
        store: JobStore,
        checks: JobFileChecks,
        run_folder: RunFolderWriter,
        adapters: AdapterService,
        submit: Callable[[str], None],
        fail: Fail,
        cancelling: set[str],
    ) -> None:
        self._store = store
        self._checks = checks
        self._run_folder = run_folder
        self._adapters = adapters
        self._submit = submit
        self._fail = fail
        self._cancelling = cancelling
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self.validate(job_id), name=f"validate-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def validate(self, job_id: str) -> None:
        job = self._store.get(job_id)
        method = job["method"]["type"]
        try:
            checked = await self._checks.check(job)
            parent = self._parent_of(job)
        except DatasetRejected as rejected:
            self._fail(job_id, rejected.code, rejected.message, rejected.param)
            return
        if job_id in self._cancelling:
            return
        train, valid = checked.train, checked.valid
        for warning in checked.warnings:
            self._store.add_event(job_id, warning, level="warn")
        requested = job["_requested"]
        if parent is not None:  # the LoRA's shape is the adapter's being continued
            requested = {**requested, **lora_of(parent)}
        plan = job_method(method).plan(requested, len(train))
        try:
            parent_folder = (
                self._adapters.registry.folder_of(parent.id) if parent is not None else None
            )
            self._run_folder.write(job, train, valid, plan, parent, parent_folder)
        except FileNotFoundError:
            self._fail(
                job_id,
                "model_not_available",
                f"The adapter '{job['model']}' was deleted before training began.",
                "model",
            )
            return
        view = plan.openai_view()
        self._store.update(
            job_id,
            status="queued",
            _queued_at=time.time(),
            hyperparameters=view,
            method={"type": method, method: {"hyperparameters": view}},
            _plan={"train": len(train), "valid": len(valid)},
        )
        what = job_method(method).what
        self._store.add_event(
            job_id,
            f"Files validated: {len(train)} training and {len(valid)} validation {what}. "
            f"Plan: {plan.summary()}"
            + (f", continuing from {parent.id}." if parent is not None else "."),
        )
        self._submit(job_id)

    def _parent_of(self, job: dict[str, Any]) -> AdapterManifest | None:
        parent_id = job.get("_parent_adapter")
        if not parent_id:
            return None
        try:
            return self._adapters.registry.get(parent_id)
        except AdapterNotFoundError:
            raise DatasetRejected(
                "model_not_available",
                f"The adapter '{parent_id}' was deleted before training began.",
                "model",
            ) from None
