"""Fine-tuning jobs from request to servable adapter.

    create → validating_files (data checks, in a thread) → queued → running
    (a trainer in a slot; see ``training``) → succeeded (adapter registered
    and loaded, samples and results file stored) | failed | cancelled;
    running ⇄ paused on request.

This module holds the API and wires the stages together: the file checks are
``file_checks`` and the ``validating_files`` stage ``validation``, the run
folder ``run_folder``, the queue and the slots ``scheduler``, one trainer run
``training``, success (register, preload, results, export) ``success`` with
its samples in ``samples``, checkpoint models ``checkpoint_models``. Every
status change is a transition of ``job_states`` (compare and set), and every
stage runs under ``stage_guard``. After a gateway restart, a job that was
running resumes from its last checkpoint (one stopped during success finishes
it); queued and validating jobs carry on.

The method (``supervised``, ``dpo``) picks the data checks and the plan from
``JOB_METHODS``; everything else is shared. A job's ``model`` is a base, or an
adapter of this gateway that the new adapter continues from (its weights are
the starting point, and for DPO the reference).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.manifest import AdapterManifest
from adapters.naming import make_adapter_id, normalise_suffix
from gateway.adapter_service import AdapterService
from gateway.catalog import ModelCatalog
from gateway.errors import InvalidRequestError, ModelNotFoundError
from gateway.finetune.checkpoint_models import CheckpointModels
from gateway.finetune.file_checks import JobFileChecks
from gateway.finetune.files import FileStore
from gateway.finetune.hooks import StageHooks
from gateway.finetune.jobs_store import TERMINAL, JobStore, new_job_id, public
from gateway.finetune.lora_shape import check_lora_matches
from gateway.finetune.merges import MergeService, export_quantization
from gateway.finetune.methods import job_method
from gateway.finetune.protocol import CreateJobRequest
from gateway.finetune.run_folder import RunFolderWriter
from gateway.finetune.samples import SampleRecorder
from gateway.finetune.scheduler import SlotScheduler
from gateway.finetune.slots import TrainerSlot, slots_from_settings
from gateway.finetune.stage_guard import StageGuard
from gateway.finetune.success import JobSuccess
from gateway.finetune.trainer_process import TRAINER_MODULE, clear_pause
from gateway.finetune.training import TrainingRunner
from gateway.finetune.trial import trial_fields
from gateway.finetune.validation import JobValidation
from gateway.forwarding import Forwarder
from gateway.gguf_bases import refuse_untrainable
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings

log = logging.getLogger(__name__)

ORGANIZATION = "org-local"


class FineTuningService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: FileStore,
        adapters: AdapterService,
        catalog: ModelCatalog,
        forwarder: Forwarder,
        base_dirs: dict[str, Path],
        merges: MergeService,
        guard: ProcessGuard,
        trainer_module: str = TRAINER_MODULE,
    ) -> None:
        self._settings = settings
        self.store = store
        self.files = files
        self._adapters = adapters
        self._catalog = catalog
        self._forwarder = forwarder
        self._base_dirs = base_dirs
        self._merges = merges
        self._tasks: set[asyncio.Task[None]] = set()
        self.hooks = StageHooks()  # where tests hold a stage or inject a fault
        self.checkpoint_models = CheckpointModels(
            adapters, store, settings.runs_dir, settings.finetune_checkpoint_models
        )
        self.samples = SampleRecorder(store, forwarder, settings.runs_dir)
        self.success = JobSuccess(
            settings, store, files, adapters, merges, self.samples, self.hooks
        )
        self.runner = TrainingRunner(
            settings,
            store,
            files,
            self.checkpoint_models,
            guard,
            succeed=self._succeed,
            hooks=self.hooks,
            trainer_module=trainer_module,
        )
        self.guard = StageGuard(store.fail, self.runner.terminate)
        self.scheduler = SlotScheduler(slots_from_settings(settings), self._run, self._tell_place)
        self.run_folder = RunFolderWriter(
            settings.runs_dir, base_dirs, settings.finetune_max_length
        )
        self.validation = JobValidation(
            store,
            JobFileChecks(settings, files, base_dirs),
            self.run_folder,
            adapters,
            submit=self.scheduler.submit,
            guard=self.guard,
            hooks=self.hooks,
        )

    # --- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Carry on where the last gateway stopped, then start training."""
        for job in self.store.with_status("running"):
            if job.get("_result") is not None:  # stopped during success: finish it
                self._spawn(self._succeed_again(job["id"]), f"succeed-{job['id']}")
            elif self.runner.recover(job):
                self.scheduler.submit(job["id"])
        for job in sorted(self.store.with_status("queued"), key=lambda j: j.get("_queued_at", 0)):
            self.scheduler.submit(job["id"])
        for job in self.store.with_status("validating_files"):
            self.validation.spawn(job["id"])
        self.scheduler.start()

    async def stop(self) -> None:
        self.validation.stop()
        for task in self._tasks:
            task.cancel()
        await self.runner.stop()
        await self.scheduler.stop()

    # --- API --------------------------------------------------------------------
    def create(self, request: CreateJobRequest) -> dict[str, Any]:
        method = request.method_type()
        job_method(method)  # an unsupported method is refused before anything else
        # An OpenAI name (setting openai_models) trains its local base.
        model = self._catalog.openai_names.to_local(request.model, self.trainable_bases())
        base, parent = self._starting_point(model)
        self.files.get(request.training_file, "training_file")
        if request.validation_file:
            self.files.get(request.validation_file, "validation_file")
        suffix = normalise_suffix(request.suffix)
        job_id = new_job_id()
        make_adapter_id(base, suffix, job_id)  # the eventual id must be valid
        chosen = request.chosen_hyperparameters()
        if chosen.lora_rank != "auto" and chosen.lora_rank > self._settings.vllm_max_lora_rank:
            raise InvalidRequestError(
                f"lora_rank may be at most {self._settings.vllm_max_lora_rank} "
                "(setting vllm_max_lora_rank).",
                param="hyperparameters.lora_rank",
            )
        if parent is not None:
            check_lora_matches(chosen, parent)
        shown = chosen.requested()
        exports = [export_quantization(item) for item in request.export or []]
        job = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": shown,
            "model": parent.id if parent else base,
            "organization_id": ORGANIZATION,
            "result_files": [],
            "seed": request.seed if request.seed is not None else int(time.time()) % 2**31,
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": request.training_file,
            "validation_file": request.validation_file,
            "integrations": request.integrations or [],
            "metadata": request.metadata,
            "method": {"type": method, method: {"hyperparameters": shown}},
            "estimated_finish": None,
            "user_provided_suffix": request.suffix,
            "_base": base,
            "_parent_adapter": parent.id if parent else None,
            "_suffix": suffix,
            "_requested": chosen.requested(),
            "_export": exports,
            # A trial run, and what the trainer checks after training: gateway/finetune/trial.py
            **trial_fields(request.model_extra, self._base_dirs, self._settings),
        }
        self.store.insert(job)
        self.store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        self.validation.spawn(job_id)
        return public(job)

    def get(self, job_id: str) -> dict[str, Any]:
        return public(self.store.get(job_id))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id)
        if job["status"] in TERMINAL:
            raise InvalidRequestError(
                f"The job is already {job['status']}.",
                param="fine_tuning_job_id",
                code="job_finished",
            )
        if not self.store.finish(job_id, "cancelled"):
            job = self.store.get(job_id)  # it ended meanwhile
            raise InvalidRequestError(
                f"The job is already {job['status']}.",
                param="fine_tuning_job_id",
                code="job_finished",
            )
        # From here on nothing overwrites "cancelled" (job_states): stop what still runs.
        self.scheduler.withdraw(job_id)
        await self.runner.terminate(job_id)
        # A cancelled job leaves nothing servable behind: its checkpoint models, and the
        # adapter it registered if it was cancelled during success.
        await self.checkpoint_models.remove_all(job_id)
        await self.success.remove_adapter_of(job_id)
        self.store.add_event(job_id, "Fine-tuning job cancelled.")
        return self.get(job_id)

    def pause(self, job_id: str) -> dict[str, Any]:
        """A queued job stops waiting; a running one saves a checkpoint after its current step
        and stops (then it is ``paused``); its slot goes to the next job."""
        job = self.store.get(job_id)
        if job["status"] not in ("queued", "running"):
            raise InvalidRequestError(
                f"Only a queued or running job can be paused; this one is {job['status']}.",
                param="fine_tuning_job_id",
                code="job_not_pausable",
            )
        if self.scheduler.withdraw(job_id):
            self.store.transition(job_id, ("queued",), "paused", estimated_finish=None)
            self.store.add_event(job_id, "Fine-tuning job paused before it started training.")
        elif not job.get("_pause_requested"):
            self.runner.request_pause(job_id)
            self.store.add_event(
                job_id,
                "Pause requested: the trainer saves a checkpoint after its current step, "
                "then the job is paused.",
            )
        return self.get(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        """A paused job queues again, and continues from the checkpoint it paused at."""
        job = self.store.get(job_id)
        if job["status"] != "paused":
            raise InvalidRequestError(
                f"Only a paused job can be resumed; this one is {job['status']}.",
                param="fine_tuning_job_id",
                code="job_not_paused",
            )
        clear_pause(self._settings.runs_dir / job_id)
        if not self.store.transition(job_id, ("paused",), "queued", _queued_at=time.time()):
            return self.get(job_id)  # cancelled meanwhile
        self.store.add_event(job_id, "Fine-tuning job resumed: queued to continue training.")
        self.scheduler.submit(job_id)
        return self.get(job_id)

    def _tell_place(self, job_id: str, place: int, busy: int) -> None:
        slots = len(self.scheduler.slots)
        self.store.add_event(
            job_id,
            f"Waiting for a trainer slot: number {place} in the queue "
            f"({busy} of {slots} slot{'s' if slots != 1 else ''} busy).",
            data={"queue_position": place},
        )

    # --- stages, each under the guard ---------------------------------------
    async def _run(self, job_id: str, slot: TrainerSlot) -> bool:
        """One trainer run in a slot; True: queue the job again (it was interrupted)."""
        again = False
        async with self.guard.stage(job_id, "run"):
            again = await self.runner.run(job_id, slot)
        return again

    async def _succeed(
        self, job_id: str, result: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> None:
        async with self.guard.stage(job_id, "succeed"):
            await self.success.succeed(job_id, result, metrics)

    async def _succeed_again(self, job_id: str) -> None:
        job = self.store.get(job_id)
        self.store.add_event(
            job_id, "The gateway restarted while this job registered its adapter; carrying on."
        )
        await self._succeed(job_id, job["_result"], self.runner.step_metrics(job_id))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def trainable_bases(self) -> list[str]:
        """The base models a job may name: those with an HF checkpoint."""
        return sorted(self._base_dirs)

    # --- helpers ----------------------------------------------------------------
    def _starting_point(self, model: str) -> tuple[str, AdapterManifest | None]:
        """(base, adapter to continue or None) for a job's ``model``: a base or an adapter."""
        if model in self._base_dirs:
            return model, None
        try:
            parent = self._adapters.get(model)
        except (AdapterError, InvalidRequestError):
            if model.startswith("ft:"):  # an adapter id that names nothing registered
                raise ModelNotFoundError(
                    model[:200], f"No adapter '{model[:200]}' is registered here."
                ) from None
            parent = None
        if parent is not None and parent.base in self._base_dirs:
            return parent.base, parent
        refuse_untrainable(self._catalog, model)  # a GGUF-only base: being derived, or unreadable
        known = ", ".join(self.trainable_bases()) or "none"
        raise InvalidRequestError(
            f"'{model}' cannot be fine-tuned here; base models that can: {known}, "
            "and adapters of this gateway on them.",
            param="model",
            code="model_not_available",
        )
