"""``tunegate import``: re-create another service's fine-tuning jobs here.

    tunegate import --from https://api.openai.com/v1 --api-key sk-… [--job ID] [--dry-run]

The source is read through the official ``openai`` SDK only (jobs, files, file
contents), so any OpenAI-compatible fine-tuning API works as a source: OpenAI
itself, or another tunegate. For each job, its training and validation files are
downloaded and uploaded here (each file once), and the job is created here with:

- the same ``model`` name. The gateway maps OpenAI names to local bases (setting
  ``openai_models``; by default OpenAI's fine-tunable models train the embedded
  model), so the mapping lives in one place, the same one that serves chat
  requests naming that model. The plan shows the local model each name maps to
  (or the gateway's message when it serves none); creating the job is what
  decides, and a job the gateway refuses is reported with its message, the
  others imported all the same.
- the method (``supervised``, ``dpo``) and its hyperparameters as the source shows
  them: explicit values stay, "auto" stays "auto". ``reinforcement`` jobs are skipped.
- ``suffix``, ``seed`` and ``metadata``, plus ``IMPORTED_FROM`` = the source job's
  id, which is how a second import skips jobs it imported before.

Every job is taken, whatever its status (a job that failed at the source may well
train here); ``--status`` keeps only some. ``integrations`` are not carried over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

IMPORTED_FROM = "tunegate_imported_from"
METADATA_MAX_PAIRS = 16
_FILE_FIELDS = ("training_file", "validation_file")


@dataclass
class PlannedJob:
    """One source job and what creating it here takes; ``skip`` says why it will not be."""

    source_id: str
    status: str
    model: str
    local_model: str | None = None
    method: str = "supervised"
    files: dict[str, str] = field(default_factory=dict)  # training_file/validation_file -> id
    create: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None
    note: str | None = None  # what the gateway says of the model, when it serves none


@dataclass
class ImportedJob:
    source_id: str
    job_id: str
    local_model: str | None


def _as_dict(item: Any) -> dict[str, Any]:
    """An SDK object as plain data, the fields it does not know included (a tunegate
    source's LoRA hyperparameters)."""
    return item.model_dump(mode="json") if hasattr(item, "model_dump") else dict(item)


def _method_of(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(method type, its hyperparameters) of a source job, older jobs included (their
    hyperparameters are top-level and their method supervised)."""
    method = job.get("method") or {}
    kind = method.get("type") or "supervised"
    block = method.get(kind) or {}
    hyperparameters = block.get("hyperparameters") or job.get("hyperparameters") or {}
    return kind, {k: v for k, v in hyperparameters.items() if v is not None}


def _creation(job: dict[str, Any], kind: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    metadata = {**(job.get("metadata") or {}), IMPORTED_FROM: job["id"]}
    create: dict[str, Any] = {
        "model": job["model"],
        "method": {"type": kind, kind: {"hyperparameters": hyperparameters}},
        "metadata": metadata,
    }
    suffix = job.get("user_provided_suffix") or job.get("suffix")
    if suffix:
        create["suffix"] = suffix
    if job.get("seed") is not None:
        create["seed"] = job["seed"]
    return create


class Importer:
    """Plans and runs an import from ``source`` into ``target`` (two ``openai.OpenAI``)."""

    def __init__(self, source: Any, target: Any, say: Callable[[str], None] = print) -> None:
        self.source = source
        self.target = target
        self.say = say
        self._local_models: dict[str, str | None] = {}
        self._model_errors: dict[str, str] = {}
        self.failed: dict[str, str] = {}  # source job id -> why the target refused it

    # --- planning ---------------------------------------------------------------
    def plan(self, job_ids: Iterable[str] = (), statuses: Iterable[str] = ()) -> list[PlannedJob]:
        wanted, statuses = list(job_ids), set(statuses)
        if wanted:
            jobs = [_as_dict(self.source.fine_tuning.jobs.retrieve(j)) for j in wanted]
        else:
            # Listed newest first: reversed, so that jobs of the same second keep their order.
            jobs = [_as_dict(j) for j in self.source.fine_tuning.jobs.list(limit=100)][::-1]
        imported = self._imported_here()
        planned = []
        for job in sorted(jobs, key=lambda j: j.get("created_at") or 0):
            if statuses and job.get("status") not in statuses:
                continue
            planned.append(self._plan_one(job, imported))
        return planned

    def _plan_one(self, job: dict[str, Any], imported: dict[str, str]) -> PlannedJob:
        kind, hyperparameters = _method_of(job)
        plan = PlannedJob(job["id"], job.get("status", "?"), job["model"], method=kind)
        plan.files = {name: job[name] for name in _FILE_FIELDS if job.get(name)}
        plan.create = _creation(job, kind, hyperparameters)
        plan.local_model = self._local_model(job["model"])
        if plan.local_model is None:
            plan.note = self._model_errors[job["model"]]
        if job["id"] in imported:
            plan.skip = f"imported before, as {imported[job['id']]}"
        elif kind not in ("supervised", "dpo"):
            plan.skip = f"the {kind} method is not supported here (supervised and dpo are)"
        elif len(plan.create["metadata"]) > METADATA_MAX_PAIRS:
            plan.skip = (
                f"its metadata has {METADATA_MAX_PAIRS} pairs already: no room for "
                f"'{IMPORTED_FROM}'"
            )
        return plan

    def _local_model(self, name: str) -> str | None:
        """What ``name`` trains here: the gateway's own answer (an OpenAI name's entry
        has the local base as its parent); None when nothing serves it."""
        if name not in self._local_models:
            try:
                model = _as_dict(self.target.models.retrieve(name))
            except Exception as exc:  # the SDK's NotFoundError, with the gateway's message
                self._model_errors[name] = _message_of(exc)
                self._local_models[name] = None
            else:
                mapped = model.get("kind") == "openai_name"
                self._local_models[name] = model.get("parent") if mapped else model["id"]
        return self._local_models[name]

    def _imported_here(self) -> dict[str, str]:
        """Source job id -> the job here that was imported from it."""
        found = {}
        for job in map(_as_dict, self.target.fine_tuning.jobs.list(limit=100)):
            source_id = (job.get("metadata") or {}).get(IMPORTED_FROM)
            if source_id:
                found[source_id] = job["id"]
        return found

    # --- running ----------------------------------------------------------------
    def run(self, plan: list[PlannedJob]) -> list[ImportedJob]:
        """Creates the planned jobs; one the target refuses is reported (``failed``)
        and the others carry on."""
        copied: dict[str, str] = {}
        done = []
        for job in plan:
            if job.skip:
                continue
            create = dict(job.create)
            for name, file_id in job.files.items():
                if file_id not in copied:
                    copied[file_id] = self._copy_file(file_id)
                create[name] = copied[file_id]
            try:
                created = self.target.fine_tuning.jobs.create(**create)
            except Exception as exc:  # the SDK's APIStatusError, with the gateway's message
                self.failed[job.source_id] = _message_of(exc)
                self.say(f"{job.source_id}: not imported: {self.failed[job.source_id]}")
                continue
            self.say(f"{job.source_id} -> {created.id} ({created.model})")
            done.append(ImportedJob(job.source_id, created.id, job.local_model))
        return done

    def _copy_file(self, file_id: str) -> str:
        meta = self.source.files.retrieve(file_id)
        data = self.source.files.content(file_id).read()
        uploaded = self.target.files.create(
            file=(meta.filename or f"{file_id}.jsonl", data), purpose="fine-tune"
        )
        self.say(f"file {file_id} ({len(data)} bytes) -> {uploaded.id}")
        return uploaded.id


def describe(plan: list[PlannedJob]) -> list[str]:
    """The plan as lines a person reads: one per job, then what each carries."""
    if not plan:
        return ["no fine-tuning jobs to import"]
    lines = []
    for job in plan:
        target = job.local_model or "?"
        head = f"{job.source_id} [{job.status}] {job.model} -> {target}, {job.method}"
        if job.skip:
            lines.append(f"skip {head}: {job.skip}")
            continue
        lines.append(f"import {head}")
        if job.note:
            lines.append(f"    model: {job.note}")
        files = ", ".join(f"{k}={v}" for k, v in job.files.items())
        lines.append(f"    files: {files}")
        settings = job.create["method"][job.method]["hyperparameters"]
        lines.append(f"    hyperparameters: {settings or 'auto'}")
        for key in ("suffix", "seed", "metadata"):
            if key in job.create:
                lines.append(f"    {key}: {job.create[key]}")
    return lines


def _message_of(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return getattr(error, "message", None) or str(error)
