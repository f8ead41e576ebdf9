"""Fine-tuning jobs from request to servable adapter.

    create → validating_files (data checks, in a thread) → queued → running
    (a trainer in a slot; see ``training``) → succeeded (adapter registered
    and loaded, samples and results file stored) | failed | cancelled;
    running ⇄ paused on request.

This module holds the API and the work before and after training; the queue
and the slots are ``scheduler``, one trainer run is ``training``, checkpoint
models are ``checkpoint_models``. After a gateway restart, a job that was
running resumes from its last checkpoint; queued and validating jobs carry on.

The method (``supervised``, ``dpo``) picks the data checks and the plan from
``JOB_METHODS``; everything else is shared. A job's ``model`` is a base, or an
adapter of this gateway that the new adapter continues from (its weights are
the starting point, and for DPO the reference).
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.errors import AdapterNotFoundError
from adapters.manifest import AdapterManifest
from adapters.naming import DEFAULT_OWNER, make_adapter_id, normalise_suffix
from adapters.registry import RegisterRequest
from adapters.validation import CONFIG_FILE, WEIGHTS_FILE
from gateway.adapter_service import AdapterService
from gateway.catalog import ModelCatalog
from gateway.errors import InvalidRequestError, ModelNotFoundError, TunegateError
from gateway.finetune.checkpoint_models import CheckpointModels
from gateway.finetune.files import FileStore
from gateway.finetune.jobs_store import TERMINAL, JobStore, base_of, new_job_id, public
from gateway.finetune.merges import MergeService, check_quantization
from gateway.finetune.methods import job_method
from gateway.finetune.protocol import CreateJobRequest, Hyperparameters
from gateway.finetune.scheduler import SlotScheduler
from gateway.finetune.slots import slots_from_settings
from gateway.finetune.trainer_process import TRAINER_MODULE, clear_pause
from gateway.finetune.training import VALID_METRIC_FIELDS, TrainingRunner
from gateway.forwarding import Forwarder
from gateway.process_guard import ProcessGuard
from gateway.protocol import ChatCompletionRequest
from gateway.settings import Settings
from tuner import hyperparameters as hp
from tuner.dataset import CheckedDataset, DatasetLimits, split_for_validation, to_jsonl

log = logging.getLogger(__name__)

ORGANIZATION = "org-local"
_SAMPLE_COUNT = 3
_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_target_modules")


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
        self._validations: set[asyncio.Task[None]] = set()
        self._cancelling: set[str] = set()
        self.checkpoint_models = CheckpointModels(
            adapters, store, settings.runs_dir, settings.finetune_checkpoint_models
        )
        self.runner = TrainingRunner(
            settings,
            store,
            files,
            self.checkpoint_models,
            guard,
            succeed=self._succeed,
            fail=self._fail,
            trainer_module=trainer_module,
        )
        self.scheduler = SlotScheduler(
            slots_from_settings(settings), self.runner.run, self._tell_place
        )

    # --- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        """Carry on where the last gateway stopped, then start training."""
        for job in self.store.with_status("running"):
            if self.runner.recover(job):
                self.scheduler.submit(job["id"])
        for job in sorted(self.store.with_status("queued"), key=lambda j: j.get("_queued_at", 0)):
            self.scheduler.submit(job["id"])
        for job in self.store.with_status("validating_files"):
            self._spawn_validation(job["id"])
        self.scheduler.start()

    async def stop(self) -> None:
        for task in self._validations:
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
            _check_lora_matches(chosen, parent)
        shown = chosen.requested()
        exports = [_export_quantization(item) for item in request.export or []]
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
        }
        self.store.insert(job)
        self.store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        self._spawn_validation(job_id)
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
        self._cancelling.add(job_id)
        self.scheduler.withdraw(job_id)
        await self.runner.cancel(job_id)
        self._finish_as(job_id, "cancelled")
        # A cancelled job leaves nothing servable behind.
        await self.checkpoint_models.remove_all(job_id)
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
            self.store.update(job_id, status="paused", estimated_finish=None)
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
        self.store.update(job_id, status="queued", _queued_at=time.time())
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

    # --- validation -----------------------------------------------------------
    def _spawn_validation(self, job_id: str) -> None:
        task = asyncio.create_task(self._validate(job_id), name=f"validate-{job_id}")
        self._validations.add(task)
        task.add_done_callback(self._validations.discard)

    async def _validate(self, job_id: str) -> None:
        job = self.store.get(job_id)
        method = job["method"]["type"]
        try:
            train, train_warnings = await self._check_file(
                job, job["training_file"], "training_file"
            )
            valid: list[dict[str, Any]] = []
            if job["validation_file"]:
                valid, _ = await self._check_file(job, job["validation_file"], "validation_file")
            else:
                train, valid = split_for_validation(train, job["seed"])
                if valid:
                    train_warnings.append(
                        f"Held out {len(valid)} of {len(train) + len(valid)} "
                        f"{job_method(method).what} for validation."
                    )
            parent = self._parent_of(job)
        except _DatasetRejected as rejected:
            self._fail(job_id, rejected.code, rejected.message, rejected.param)
            return
        if job_id in self._cancelling:
            return
        for warning in train_warnings:
            self.store.add_event(job_id, warning, level="warn")
        requested = job["_requested"]
        if parent is not None:  # the LoRA's shape is the adapter's being continued
            requested = {**requested, **_lora_of(parent)}
        plan = job_method(method).plan(requested, len(train))
        try:
            self._write_run_dir(job, train, valid, plan, parent)
        except FileNotFoundError:
            self._fail(
                job_id,
                "model_not_available",
                f"The adapter '{job['model']}' was deleted before training began.",
                "model",
            )
            return
        view = plan.openai_view()
        self.store.update(
            job_id,
            status="queued",
            _queued_at=time.time(),
            hyperparameters=view,
            method={"type": method, method: {"hyperparameters": view}},
            _plan={"train": len(train), "valid": len(valid)},
        )
        what = job_method(method).what
        self.store.add_event(
            job_id,
            f"Files validated: {len(train)} training and {len(valid)} validation {what}. "
            f"Plan: {plan.summary()}"
            + (f", continuing from {parent.id}." if parent is not None else "."),
        )
        self.scheduler.submit(job_id)

    async def _check_file(
        self, job: dict[str, Any], file_id: str, param: str
    ) -> tuple[list[dict[str, Any]], list[str]]:
        raw = self.files.path(file_id, param).read_bytes()
        counter = _token_counter(self._base_dirs[base_of(job)])
        limits = DatasetLimits(
            min_examples=self._settings.finetune_min_examples if param == "training_file" else 1,
            max_tokens=self._settings.finetune_max_length,
        )
        check = job_method(job["method"]["type"]).check
        checked: CheckedDataset = await asyncio.to_thread(check, raw, limits, counter)
        if not checked.ok:
            raise _DatasetRejected(
                checked.errors[0].code, f"Invalid {param}: {checked.error_summary()}", param
            )
        return checked.examples, checked.warnings

    def _write_run_dir(
        self,
        job: dict[str, Any],
        train: list,
        valid: list,
        plan: hp.Hyperparameters,
        parent: AdapterManifest | None,
    ) -> None:
        run_dir = self._settings.runs_dir / job["id"]
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        (run_dir / "train.jsonl").write_bytes(to_jsonl(train))
        if valid:
            (run_dir / "valid.jsonl").write_bytes(to_jsonl(valid))
        start_adapter = None
        if parent is not None:
            # A copy in the run: the trainer reads only its own run, and the adapter may be
            # deleted while the job waits or trains.
            start_adapter = run_dir / "start_adapter"
            start_adapter.mkdir()
            source = self._adapters.registry.folder_of(parent.id)
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                shutil.copyfile(source / name, start_adapter / name)
        spec = {
            "base_dir": str(self._base_dirs[base_of(job)]),
            "method": job["method"]["type"],
            "method_options": plan.trainer_options(),
            "start_adapter": str(start_adapter) if start_adapter else None,
            "n_epochs": plan.n_epochs,
            "batch_size": plan.batch_size,
            "learning_rate": plan.learning_rate,
            "seed": job["seed"],
            "integrations": job.get("integrations") or [],  # tuner.integrations
            "max_length": self._settings.finetune_max_length,
            "lora": {
                "rank": plan.lora_rank,
                "alpha": plan.lora_alpha,
                "target_modules": plan.lora_target_modules,
            },
        }
        (run_dir / "job.json").write_text(json.dumps(spec, indent=2))

    # --- after training --------------------------------------------------------
    async def _succeed(
        self, job_id: str, result: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> None:
        job = self.store.get(job_id)
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
            dataset_sha256=self.files.sha256(job["training_file"]),
        )
        try:
            manifest = await self._adapters.register(
                request, extra_roots=(self._settings.runs_dir,)
            )
        except TunegateError as error:
            self._fail(
                job_id, "registration_failed", f"The trained adapter was refused: {error.message}"
            )
            return
        try:
            await self._adapters.preload(manifest.id)
        except TunegateError as error:
            self.store.add_event(
                job_id, f"The adapter will load on first use: {error.message}", level="warn"
            )
        await self._record_samples(job_id, manifest.id, result.get("valid_loss"))
        results = await self.files.create_from_bytes(
            _metrics_csv(metrics), "step_metrics.csv", "fine-tune-results"
        )
        self.store.update(
            job_id,
            status="succeeded",
            fine_tuned_model=manifest.id,
            finished_at=int(time.time()),
            trained_tokens=result.get("trained_tokens"),
            result_files=[results["id"]],
            estimated_finish=None,
        )
        self.store.add_event(job_id, f"New fine-tuned model created: {manifest.id}")
        self.store.add_event(job_id, "The job has successfully completed.")
        for quantization in job.get("_export", []):
            merge = self._merges.request(manifest.id, quantization)
            self.store.add_event(
                job_id,
                f"Export to GGUF ({quantization}) started as {merge['id']}; the model will be "
                f"{merge['model']}.",
                data={"merge_id": merge["id"], "model": merge["model"]},
            )

    async def _record_samples(self, job_id: str, model_id: str, valid_loss: float | None) -> None:
        """A few held-out prompts through the base and the new adapter, side by side."""
        run_dir = self._settings.runs_dir / job_id
        source = (
            run_dir / "valid.jsonl"
            if (run_dir / "valid.jsonl").is_file()
            else run_dir / "train.jsonl"
        )
        held_out = source.name == "valid.jsonl"
        examples = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        job = self.store.get(job_id)
        sample = job_method(job["method"]["type"]).sample
        # "base" is what the job started from: the base model, or the adapter it continued.
        base = job["model"]
        for number, example in enumerate(examples[:_SAMPLE_COUNT], start=1):
            prompt, expected = sample(example)
            answers = {}
            for label, model in (("base", base), ("fine_tuned", model_id)):
                answers[label] = await self._complete(model, prompt)
            self.store.add_event(
                job_id,
                f"{'Held-out' if held_out else 'Training'} sample {number}: "
                f"base said {answers['base']!r}; fine-tuned said {answers['fine_tuned']!r}",
                data={
                    "held_out": held_out,
                    "prompt": prompt,
                    "expected": expected,
                    "base_answer": answers["base"],
                    "fine_tuned_answer": answers["fine_tuned"],
                    "valid_loss": valid_loss,
                },
            )

    async def _complete(self, model: str, messages: list[dict[str, Any]]) -> str | None:
        body = {"model": model, "messages": messages, "max_tokens": 64, "temperature": 0}
        raw = json.dumps(body).encode()
        try:
            reply = await self._forwarder.forward(
                "/v1/chat/completions", ChatCompletionRequest.model_validate(body), raw
            )
            return json.loads(reply.body)["choices"][0]["message"]["content"]
        except (TunegateError, ValueError, KeyError, IndexError):
            return None

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
        except (AdapterNotFoundError, InvalidRequestError):
            if model.startswith("ft:"):  # an adapter id that names nothing registered
                raise ModelNotFoundError(
                    model[:200], f"No adapter '{model[:200]}' is registered here."
                ) from None
            parent = None
        if parent is not None and parent.base in self._base_dirs:
            return parent.base, parent
        known = ", ".join(self.trainable_bases()) or "none"
        raise InvalidRequestError(
            f"'{model}' cannot be fine-tuned here; base models that can: {known}, "
            "and adapters of this gateway on them.",
            param="model",
            code="model_not_available",
        )

    def _parent_of(self, job: dict[str, Any]) -> AdapterManifest | None:
        parent_id = job.get("_parent_adapter")
        if not parent_id:
            return None
        try:
            return self._adapters.registry.get(parent_id)
        except AdapterNotFoundError:
            raise _DatasetRejected(
                "model_not_available",
                f"The adapter '{parent_id}' was deleted before training began.",
                "model",
            ) from None

    def _fail(self, job_id: str, code: str, message: str, param: str | None = None) -> None:
        self._finish_as(job_id, "failed", error={"code": code, "message": message, "param": param})
        self.store.add_event(job_id, message, level="error")

    def _finish_as(self, job_id: str, status: str, **changes: Any) -> None:
        self.store.update(
            job_id, status=status, finished_at=int(time.time()), estimated_finish=None, **changes
        )


def _lora_of(adapter: AdapterManifest) -> dict[str, Any]:
    return {
        "lora_rank": adapter.rank,
        "lora_alpha": int(adapter.alpha),
        "lora_target_modules": sorted(adapter.target_modules),
    }


def _check_lora_matches(chosen: Hyperparameters, parent: AdapterManifest) -> None:
    """A continued adapter keeps its shape; asking for another one is an error, not ignored."""
    shape = _lora_of(parent)
    for name in _LORA_FIELDS:
        value = getattr(chosen, name)
        wanted = sorted(value) if isinstance(value, list) else value
        if value != "auto" and wanted != shape[name]:
            raise InvalidRequestError(
                f"'{parent.id}' is continued with its own LoRA shape ({name} "
                f'{shape[name]}); leave {name} "auto" or start from the base.',
                param=f"hyperparameters.{name}",
            )


class _DatasetRejected(Exception):
    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@functools.lru_cache(maxsize=8)  # one tokenizer load per base, not per file checked
def _token_counter(base_dir: Path) -> Callable[[str], int] | None:
    tokenizer_file = base_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _metrics_csv(metrics: list[dict[str, Any]]) -> bytes:
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


def _export_quantization(item: str) -> str:
    """``"gguf"`` (q8_0) or ``"gguf:<quantization>"``."""
    kind, _, quantization = item.partition(":")
    if kind != "gguf":
        raise InvalidRequestError(
            '\'export\' items are "gguf" or "gguf:<quantization>".', param="export"
        )
    return check_quantization(quantization or "q8_0")
