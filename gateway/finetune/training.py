"""One run of a job's trainer in a slot, what it says, and what happens when it stops.

    queued → running ─┬─ result ──────────────→ (registration) → succeeded
                      ├─ paused (on request) ──→ paused ─(resume)→ queued
                      ├─ error (an exception) ─→ failed
                      └─ died, or the gateway ─→ queued again, to resume from
                         restarted                its last checkpoint (at most
                                                  finetune_max_auto_resumes
                                                  times; then failed)

Every status change is a transition of ``job_states`` (compare and set): a
job cancelled while its trainer stops stays cancelled, and what its trainer
said last (a checkpoint, a step) changes nothing once the job left
``running``; ``terminate`` returns only once the run has stopped handling its
trainer's events, so a cancel that then removes the job's checkpoint models
leaves none behind. Whatever the run
raises (a handler's bug, a database that cannot be written), the trainer is
stopped before the exception leaves ``run``: no orphan keeps training while
its slot goes to the next job; the stage guard then fails the job.

A trainer's run is resumable because the trainer checkpoints each epoch with
its optimizer, scheduler and RNG state, and resumes from the last checkpoint
it sealed itself. A gateway that is stopped cleanly stops its trainers and
resumes them when it starts again without counting that as an interruption.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import TunegateError
from gateway.finetune.checkpoint_models import CheckpointModels, checkpoint_model_id
from gateway.finetune.files import FileStore
from gateway.finetune.hooks import StageHooks
from gateway.finetune.jobs_store import JobStore
from gateway.finetune.slots import TrainerSlot
from gateway.finetune.trainer_process import (
    TRAINER_MODULE,
    TrainerProcess,
    clear_pause,
    request_pause,
    trainer_command,
)
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings

log = logging.getLogger(__name__)

_PATHS = re.compile(r"(/[^\s'\"]+)+")
# How a trainer's error event says the disk is full (ENOSPC, EDQUOT, SQLite's wording).
_DISK_FULL_SIGNS = ("[Errno 28]", "No space left on device", "[Errno 122]", "disk is full")
_PROGRESS_FIELDS = ("step", "total_steps", "epoch", "train_loss", "tokens_per_s", "eta_s")
# The methods' train metrics (supervised: token accuracy; DPO: reward accuracy and margin)
# and how the step events name them; a trainer reports those its method has.
TRAIN_METRIC_LABELS = {
    "train_mean_token_accuracy": "token accuracy",
    "train_reward_accuracy": "reward accuracy",
    "train_reward_margin": "reward margin",
}
VALID_METRIC_FIELDS = ("valid_mean_token_accuracy", "valid_reward_accuracy", "valid_reward_margin")

# How long stopping a job waits for its run to finish the event it is handling (say, a
# checkpoint being registered) once its trainer stopped.
_HANDLING_TIMEOUT_S = 120.0

# (job id, the trainer's result event, the step metrics of the whole job)
Succeed = Callable[[str, dict[str, Any], list[dict[str, Any]]], Awaitable[None]]


@dataclass(eq=False)
class _Training:
    """A job's trainer, and when its run has handled the last of its events."""

    trainer: TrainerProcess
    handled: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Run:
    """What one trainer run has said so far."""

    again: bool  # an earlier run of the job was interrupted
    result: dict[str, Any] | None = None
    error: str | None = None
    paused_at: int | None = None
    resumed_from: int | None = None
    told_restart: bool = False
    metrics: list[dict[str, Any]] = field(default_factory=list)


class TrainingRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: FileStore,
        checkpoints: CheckpointModels,
        guard: ProcessGuard,
        succeed: Succeed,
        hooks: StageHooks,
        trainer_module: str = TRAINER_MODULE,
    ) -> None:
        self._settings = settings
        self._store = store
        self._files = files
        self._checkpoints = checkpoints
        self._guard = guard
        self._succeed = succeed
        self._hooks = hooks
        self.trainer_module = trainer_module  # tests run a stand-in
        self._trainings: dict[str, _Training] = {}
        self._stopping = False

    # --- one run ----------------------------------------------------------------
    async def run(self, job_id: str, slot: TrainerSlot) -> bool:
        """Train ``job_id`` in ``slot`` until its trainer stops; True: queue it again."""
        job = self._store.get(job_id)
        runs = int(job.get("_runs", 0)) + 1
        if not self._store.transition(
            job_id, ("queued",), "running", _runs=runs, _stopped_by_shutdown=False
        ):
            return False  # paused or cancelled while it waited
        run_dir = self._run_dir(job_id)
        if not job.get("_pause_requested"):
            clear_pause(run_dir)
        self._store.add_event(
            job_id,
            f"Fine-tuning job started on {slot.describe()}."
            if runs == 1
            else f"Fine-tuning job running again on {slot.describe()}.",
            data={"slot": slot.index, "processes": slot.processes},
        )
        command = trainer_command(
            run_dir, slot, self._settings.tuner_accelerate_config, self.trainer_module
        )
        trainer = TrainerProcess(run_dir, command, self._guard)
        state = _Run(again=runs > 1)
        training = self._trainings[job_id] = _Training(trainer)
        try:
            await trainer.start()
            async for event in trainer.events():
                handler = self._handlers().get(event["type"])
                # A job cancelled or failed meanwhile: its trainer's last words change nothing.
                if handler is not None and self._store.get(job_id)["status"] == "running":
                    await handler(job_id, event, state)
            returncode = await trainer.wait()
        except BaseException:
            await trainer.terminate()  # never an orphan trainer in a slot given to another job
            raise
        finally:
            self._trainings.pop(job_id, None)
            training.handled.set()
        return await self._after_run(job_id, state, returncode)

    async def _after_run(self, job_id: str, state: _Run, returncode: int) -> bool:
        if self._stopping:
            return False  # a stopping gateway resumes it next time
        if self._store.get(job_id)["status"] != "running":
            return False  # cancelled (or failed) while its trainer ran: it stays so
        if state.result is not None and returncode == 0:
            # Kept with the job: a gateway stopped during success carries on from here.
            self._store.update(job_id, _pause_requested=False, _result=state.result)
            await self._hooks.reach("trainer_finished", job_id=job_id)
            await self._succeed(job_id, state.result, self.step_metrics(job_id))
            return False
        if state.paused_at is not None and returncode == 0:
            if not self._store.transition(
                job_id, ("running",), "paused", _pause_requested=False, estimated_finish=None
            ):
                return False
            self._store.add_event(
                job_id,
                f"Fine-tuning job paused at step {state.paused_at}, with a checkpoint saved; "
                "resume it to continue from there.",
                data={"step": state.paused_at},
            )
            return False
        if state.error is not None:
            self._store.fail(job_id, *_training_error(state.error))
            return False
        return self.after_interruption(job_id, f"the trainer stopped (exit status {returncode})")

    def recover(self, job: dict[str, Any]) -> bool:
        """At start: a job that was running when the last gateway stopped; True: queue it."""
        job_id = job["id"]
        if job.get("_pause_requested"):
            if not self._store.transition(job_id, ("running",), "paused", _pause_requested=False):
                return False
            self._store.add_event(
                job_id,
                "The gateway stopped while this job was pausing: it is paused at its last "
                "checkpoint; resume it to continue.",
            )
            return False
        if job.get("_stopped_by_shutdown"):
            if not self._store.transition(
                job_id, ("running",), "queued", _stopped_by_shutdown=False
            ):
                return False
            self._store.add_event(
                job_id,
                "The gateway was stopped while this job was running; it resumes from its last "
                "checkpoint.",
            )
            return True
        return self.after_interruption(job_id, "the gateway restarted")

    def after_interruption(self, job_id: str, reason: str) -> bool:
        """Queue an interrupted job again, or fail it past the bound; True: queued."""
        job = self._store.get(job_id)
        resumes = int(job.get("_auto_resumes", 0)) + 1
        limit = self._settings.finetune_max_auto_resumes
        if resumes > limit:
            self._store.fail(
                job_id,
                "too_many_interruptions",
                f"Training was interrupted ({reason}) after {limit} automatic "
                f"resume{'s' if limit != 1 else ''}, the limit (setting "
                "finetune_max_auto_resumes): the job stops here. Its checkpoints stay servable.",
            )
            return False
        if not self._store.transition(
            job_id, ("running",), "queued", _auto_resumes=resumes, estimated_finish=None
        ):
            return False
        self._store.add_event(
            job_id,
            f"Training was interrupted ({reason}); it resumes from its last checkpoint "
            f"(automatic resume {resumes} of {limit}).",
            level="warn",
            data={"auto_resumes": resumes},
        )
        return True

    # --- control ----------------------------------------------------------------
    def request_pause(self, job_id: str) -> None:
        """The trainer saves a checkpoint after its current step and stops."""
        self._store.update(job_id, _pause_requested=True)
        request_pause(self._run_dir(job_id))

    async def terminate(self, job_id: str) -> None:
        """Stop the job's trainer, if one runs (a cancel, or a stage that failed), and wait
        until its run has finished handling the events it read before the stop."""
        training = self._trainings.get(job_id)
        if training is None:
            return
        started = training.trainer.pid is not None  # else it never runs, and says nothing
        await training.trainer.terminate()
        if not started:
            return
        try:
            await asyncio.wait_for(training.handled.wait(), _HANDLING_TIMEOUT_S)
        except TimeoutError:
            log.warning("job %s: its run still handles its trainer's events", job_id)

    async def stop(self) -> None:
        """The gateway is stopping: stop every trainer; each job resumes at the next start."""
        self._stopping = True
        for job_id in self._trainings:
            self._store.update(job_id, _stopped_by_shutdown=True)
        await asyncio.gather(*(t.trainer.terminate() for t in list(self._trainings.values())))

    def is_training(self, job_id: str) -> bool:
        return job_id in self._trainings

    # --- events -----------------------------------------------------------------
    def _handlers(self) -> dict[str, Callable[[str, dict[str, Any], _Run], Awaitable[None]]]:
        return {
            "progress": self._on_progress,
            "checkpoint": self._on_checkpoint,
            "resumed": self._on_resumed,
            "paused": self._on_paused,
            "warning": self._on_warning,
            "error": self._on_error,
            "result": self._on_result,
        }

    async def _on_progress(self, job_id: str, event: dict[str, Any], state: _Run) -> None:
        if state.again and state.resumed_from is None and not state.told_restart:
            state.told_restart = True
            self._store.add_event(
                job_id, "No checkpoint had been saved yet: training started again from step 0."
            )
        data = {key: event.get(key) for key in _PROGRESS_FIELDS}
        data.update({k: event[k] for k in TRAIN_METRIC_LABELS if event.get(k) is not None})
        state.metrics.append(data)
        shown = "".join(
            f", {label}={event[k]:.4f}"
            for k, label in TRAIN_METRIC_LABELS.items()
            if k != "train_mean_token_accuracy" and event.get(k) is not None
        )
        self._store.add_event(
            job_id,
            f"Step {event['step']}/{event['total_steps']}: "
            f"training loss={event['train_loss']:.4f}{shown}",
            data=data,
            kind="metrics",
        )
        eta = event.get("eta_s")
        if eta is not None:
            self._store.update(job_id, estimated_finish=int(time.time() + eta))

    async def _on_checkpoint(self, job_id: str, event: dict[str, Any], state: _Run) -> None:
        job = self._store.get(job_id)
        step = int(event["step"])
        model = checkpoint_model_id(job, step)
        valid = event.get("valid_loss")
        metrics = {
            "step": float(step),
            "train_loss": event.get("train_loss"),
            "train_mean_token_accuracy": event.get("train_mean_token_accuracy"),
            "valid_loss": valid,
            "valid_mean_token_accuracy": event.get("valid_mean_token_accuracy"),
            "full_valid_loss": valid,
            "full_valid_mean_token_accuracy": event.get("valid_mean_token_accuracy"),
        }
        # DPO's reward accuracy and margin, train and valid, beside OpenAI's fields.
        metrics.update(
            {
                k: event[k]
                for k in (*TRAIN_METRIC_LABELS, *VALID_METRIC_FIELDS)
                if k not in metrics and event.get(k) is not None
            }
        )
        if not self._store.add_checkpoint(job_id, step, model, metrics):
            return  # saved again by a resumed run: announced already
        problem = await self._checkpoints.register(
            job, step, event.get("adapter_dir"), self._dataset_sha256(job)
        )
        served = f"served as {model}" if problem is None else f"not servable: {problem}"
        self._store.add_event(
            job_id,
            f"Checkpoint at step {step} (epoch {event.get('epoch')}): train loss "
            f"{_fmt(event.get('train_loss'))}, valid loss {_fmt(valid)}; {served}",
            data={**metrics, "checkpoint": model},
        )
        await self._checkpoints.keep_newest(job_id)

    async def _on_resumed(self, job_id: str, event: dict[str, Any], state: _Run) -> None:
        state.resumed_from = int(event["step"])
        self._store.add_event(
            job_id,
            f"Resumed from step {state.resumed_from}, from its checkpoint.",
            data={"resumed_from_step": state.resumed_from},
        )

    async def _on_paused(self, job_id: str, event: dict[str, Any], state: _Run) -> None:
        state.paused_at = int(event["step"])

    async def _on_warning(self, job_id: str, event: dict[str, Any], state: _Run) -> None:
        self._store.add_event(job_id, event["message"], level="warn")

    async def _on_error(self, job_id: str, event: dict[str, Any], state: _Run) -> None:
        state.error = str(event.get("message"))

    async def _on_result(self, job_id: str, event: dict[str, Any], state: _Run) -> None:
        state.result = event

    # --- helpers ----------------------------------------------------------------
    def step_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Every step's metrics over all runs of the job (a step run again: its last values)."""
        rows: dict[float, dict[str, Any]] = {}
        for _, event in self._store.events_since(job_id, 0):
            data = event.get("data") or {}
            if event["type"] == "metrics" and "step" in data:
                rows[float(data["step"])] = dict(data)
            elif "checkpoint" in data and float(data["step"]) in rows:
                row = rows[float(data["step"])]
                row["valid_loss"] = data.get("valid_loss")
                row["valid_mean_token_accuracy"] = data.get("valid_mean_token_accuracy")
                row.update({k: data[k] for k in VALID_METRIC_FIELDS if k in data})
        return [rows[step] for step in sorted(rows)]

    def _dataset_sha256(self, job: dict[str, Any]) -> str | None:
        try:
            return self._files.sha256(job["training_file"])
        except TunegateError:
            return None  # the file was deleted since; the lineage keeps the job id

    def _run_dir(self, job_id: str) -> Path:
        return self._settings.runs_dir / job_id


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _training_error(error: str) -> tuple[str, str]:
    """(code, message) for the error a trainer reported; a full disk has a code of its own."""
    if any(sign in error for sign in _DISK_FULL_SIGNS):
        return "disk_full", "Training failed: the disk is full."
    return "training_failed", f"Training failed: {_without_paths(error)}"


def _without_paths(message: str) -> str:
    return _PATHS.sub("<path>", message)[:500]
