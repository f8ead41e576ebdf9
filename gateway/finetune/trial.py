"""Trial runs and the checks after every job, on the gateway's side.

A **trial** is a normal fine-tuning job created with ``"trial"`` in the body
(the SDK's ``extra_body={"trial": {"examples": N, "model": "<smaller base>"}}``;
``true`` or ``{}`` take the defaults). It validates and queues like any job,
and its trainer (``tuner.trial``) trains a sample of the data and a shuffled
control, bounded by ``finetune_trial_max_steps`` and ``finetune_trial_max_train_s``.
On success the job carries ``trial_report`` (held-out loss before and after,
``learns``, samples, ``estimated_full_run_s``, drift and repetition). Its adapter
is not registered: ``fine_tuned_model`` stays null, since a trial is a check on
the data, not a model to serve.

After **every** job the trainer reports ``checks`` (``tuner.trial_checks``):
drift on general prompts, repetition, held-out samples and, for sets under the
automatic split's size, a leave-some-out fold. This module turns them into job
events and a second results file (``validation_checks.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidRequestError
from gateway.finetune.files import FileStore
from gateway.finetune.jobs_store import JobStore
from gateway.settings import Settings

CHECKS_FILE = "validation_checks.json"


class TrialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # At least 4: two to train on and two held out.
    examples: Annotated[int, Field(ge=4, le=10_000)] | None = None
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None


def trial_fields(
    extra: dict[str, Any] | None, bases: dict[str, Path], settings: Settings
) -> dict[str, Any]:
    """The fields a new job gets: what its trainer is told to check (``_trainer_extras``,
    written into ``job.json``) and, when the request asks for a trial, ``trial``."""
    small_set_fold = settings.finetune_small_set_holdout
    # The base's answers to the general prompts are the same for every job and trial: kept there.
    extras: dict[str, Any] = {"checks_cache_dir": str(settings.checks_cache_dir)}
    if settings.finetune_after_job_checks:
        extras["checks"] = {"small_set_fold": small_set_fold}
    raw = (extra or {}).get("trial")
    if raw is None or raw is False:
        return {"_trainer_extras": extras}
    try:
        trial = TrialRequest.model_validate({} if raw is True else raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in ("trial", *first["loc"]))
        raise InvalidRequestError(f"Invalid {where}: {first['msg']}", param=where) from None
    if trial.model is not None and trial.model not in bases:
        known = ", ".join(sorted(bases)) or "none"
        raise InvalidRequestError(
            f"trial.model '{trial.model}' is not a base model here; bases: {known}.",
            param="trial.model",
            code="model_not_available",
        )
    examples = trial.examples or settings.finetune_trial_examples
    extras["trial"] = {
        "examples": examples,
        "max_steps": settings.finetune_trial_max_steps,
        "max_train_s": settings.finetune_trial_max_train_s,
        "held_out_fraction": settings.finetune_trial_held_out_fraction,
        "small_set_fold": small_set_fold,
    }
    if trial.model is not None:
        extras["trial_base_dir"] = str(bases[trial.model])
    return {
        "trial": {"examples": examples, "model": trial.model},
        "trial_report": None,
        "_trainer_extras": extras,
    }


def trainer_extras(job: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """What ``job.json`` adds for the checks and a trial (a proxy base replaces the base)."""
    extras = dict(job.get("_trainer_extras") or {})
    proxy = extras.pop("trial_base_dir", None)
    if "trial" in extras:
        extras["trial"] = {**extras["trial"], "full_base_dir": spec["base_dir"]}
    if proxy:
        extras["base_dir"] = proxy
    return extras


@dataclass
class RecordedChecks:
    files: list[str] = field(default_factory=list)  # result file ids to add to the job
    samples_recorded: bool = False  # held-out samples came from the trainer's fold


async def record_checks(
    store: JobStore, files: FileStore, job_id: str, result: dict[str, Any]
) -> RecordedChecks:
    """Events and a results file for what the trainer measured after training."""
    checks = result.get("checks")
    recorded = RecordedChecks()
    if not checks:
        return recorded
    held_out = checks.get("held_out")
    if held_out:
        store.add_event(job_id, _held_out_words(held_out), data={"held_out_check": held_out})
        for number, sample in enumerate(held_out.get("samples", []), start=1):
            store.add_event(
                job_id,
                f"Held-out sample {number} (an adapter trained without it): base said "
                f"{sample['base_answer']!r}; fine-tuned said {sample['fine_tuned_answer']!r}",
                data={**sample, "held_out": True, "from_fold": True,
                      "valid_loss": held_out.get("held_out_loss")},
            )  # fmt: skip
        recorded.samples_recorded = bool(held_out.get("samples"))
    drift, repetition = checks.get("drift") or {}, checks.get("repetition") or {}
    store.add_event(
        job_id,
        f"Drift from the base on {drift.get('prompts')} general prompts: mean KL "
        f"{_figure(drift.get('kl'), '.3f')} nats/token. Repetition on "
        f"{repetition.get('prompts')} held-out and multi-step prompts: "
        f"{_figure(repetition.get('mean'), '.0%')} repeated 3-word "
        f"sequences (base {_figure(repetition.get('base_mean'), '.0%')}), "
        f"{repetition.get('looping', 0)} looping answer(s).",
        data={
            "drift": drift,
            "repetition": repetition,
            "general_samples": checks.get("general_samples", []),
            "checks_seconds": checks.get("seconds"),
        },
    )
    body = {"checks": checks}
    if result.get("trial_report") is not None:
        body["trial_report"] = result["trial_report"]
    created = await files.create_from_bytes(
        json.dumps(body, indent=2).encode(), CHECKS_FILE, "fine-tune-results"
    )
    recorded.files.append(created["id"])
    return recorded


def _held_out_words(held_out: dict[str, Any]) -> str:
    total = held_out.get("train_examples", 0) + held_out.get("held_out_examples", 0)
    return (
        f"Held-out check on a leave-some-out fold ({held_out.get('held_out_examples')} of "
        f"{total} examples, an adapter trained on the rest): held-out loss "
        f"{_fmt(held_out.get('held_out_loss_before'))} before training, "
        f"{_fmt(held_out.get('held_out_loss'))} at best, "
        f"{_fmt(held_out.get('held_out_loss_last'))} at the end."
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


async def finish_trial(
    store: JobStore,
    files: FileStore,
    job_id: str,
    result: dict[str, Any],
    step_metrics_csv: bytes,
) -> dict[str, Any]:
    """A trial succeeded: its events and results files; returns the job's changes for the
    move to ``succeeded`` (``trial_report``; no adapter is registered)."""
    report = result.get("trial_report") or {}
    recorded = await record_checks(store, files, job_id, result)
    steps = await files.create_from_bytes(step_metrics_csv, "step_metrics.csv", "fine-tune-results")
    store.add_event(
        job_id,
        f"Trial finished: learns={str(report.get('learns')).lower()} "
        f"({report.get('verdict')}). {report.get('reason', '')} A full run would take about "
        f"{report.get('estimated_full_run_s')} s.",
        data={"trial_report": report},
    )
    return {
        "trained_tokens": result.get("trained_tokens"),
        "result_files": [steps["id"], *recorded.files],
        "trial_report": report,
    }


def _figure(value: float | None, spec: str) -> str:
    """A check the trainer did not measure reads as such, not as a perfect 0."""
    return "n/a" if value is None else format(value, spec)
