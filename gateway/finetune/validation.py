"""The ``validating_files`` stage of a job: check its files, write its run folder, queue it.

Runs as a task of its own per job (the checks run in a thread), under the
stage guard: whatever goes wrong (a full disk, a base gone, a bug) fails the
job with a code, so it is never left validating. A job still validating when
the gateway stopped is validated again at the next start. A job cancelled
meanwhile is left cancelled, and its half-written run folder removed.
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
from gateway.finetune.hooks import StageHooks
from gateway.finetune.jobs_store import JobStore
from gateway.finetune.lora_shape import lora_of
from gateway.finetune.methods import job_method
from gateway.finetune.run_folder import RunFolderWriter
from gateway.finetune.stage_guard import StageGuard


class JobValidation:
    def __init__(
        self,
        store: JobStore,
        checks: JobFileChecks,
        run_folder: RunFolderWriter,
        adapters: AdapterService,
        submit: Callable[[str], None],
        guard: StageGuard,
        hooks: StageHooks,
    ) -> None:
        self._store = store
        self._checks = checks
        self._run_folder = run_folder
        self._adapters = adapters
        self._submit = submit
        self._guard = guard
        self._hooks = hooks
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, job_id: str) -> None:
        task = asyncio.create_task(self.validate(job_id), name=f"validate-{job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def validate(self, job_id: str) -> None:
        async with self._guard.stage(job_id, "validate"):
            await self._validate(job_id)

    async def _validate(self, job_id: str) -> None:
        job = self._store.get(job_id)
        if job["status"] != "validating_files":
            return
        method = job["method"]["type"]
        try:
            checked = await self._checks.check(job)
            parent = self._parent_of(job)
        except DatasetRejected as rejected:
            self._store.fail(job_id, rejected.code, rejected.message, rejected.param)
            return
        await self._hooks.reach("validated", job_id=job_id)
        if self._store.get(job_id)["status"] != "validating_files":
            return  # cancelled while its files were checked
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
            self._run_folder.remove(job_id)
            if parent is None:
                raise
            self._store.fail(
                job_id,
                "model_not_available",
                f"The adapter '{job['model']}' was deleted before training began.",
                "model",
            )
            return
        except BaseException:
            self._run_folder.remove(job_id)  # a full disk: leave no half-written run behind
            raise
        view = plan.openai_view()
        if not self._store.transition(
            job_id,
            ("validating_files",),
            "queued",
            _queued_at=time.time(),
            hyperparameters=view,
            method={"type": method, method: {"hyperparameters": view}},
            _plan={"train": len(train), "valid": len(valid)},
        ):
            self._run_folder.remove(job_id)  # cancelled while its run folder was written
            return
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
