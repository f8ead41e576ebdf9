"""The file checks of a job: its training and validation files, read and checked by its method.

A job's files are checked once, in a thread, when it is created (the
``validating_files`` stage); a job with no validation file holds part of its
training set out. What the checks refuse ends the job with the first error's
code (``DatasetRejected``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.finetune.files import FileStore, UnknownFileError
from gateway.finetune.jobs_store import base_of
from gateway.finetune.methods import job_method
from gateway.settings import Settings
from tuner.chat_templates import chat_for_checks
from tuner.dataset import CheckedDataset, DatasetLimits, split_for_validation


class DatasetRejected(Exception):
    """A job's data cannot be trained on: its code, message and parameter, for the job."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class CheckedFiles:
    train: list[dict[str, Any]]
    valid: list[dict[str, Any]]
    warnings: list[str]


class JobFileChecks:
    def __init__(self, settings: Settings, files: FileStore, base_dirs: dict[str, Path]) -> None:
        self._settings = settings
        self._files = files
        self._base_dirs = base_dirs

    async def check(self, job: dict[str, Any]) -> CheckedFiles:
        """The job's examples, cleaned; raises ``DatasetRejected``."""
        method = job["method"]["type"]
        if base_of(job) not in self._base_dirs:  # the settings changed since it was created
            raise DatasetRejected(
                "model_not_available",
                f"The base model '{base_of(job)}' is not available here any more.",
                "model",
            )
        train, warnings = await self.check_file(job, job["training_file"], "training_file")
        valid: list[dict[str, Any]] = []
        if job["validation_file"]:
            valid, _ = await self.check_file(job, job["validation_file"], "validation_file")
        else:
            train, valid = split_for_validation(train, job["seed"])
            if valid:
                warnings.append(
                    f"Held out {len(valid)} of {len(train) + len(valid)} "
                    f"{job_method(method).what} for validation."
                )
        return CheckedFiles(train, valid, warnings)

    async def check_file(
        self, job: dict[str, Any], file_id: str, param: str
    ) -> tuple[list[dict[str, Any]], list[str]]:
        try:
            raw = await asyncio.to_thread(self._files.path(file_id, param).read_bytes)
        except (FileNotFoundError, UnknownFileError):
            raise DatasetRejected(
                "file_not_found",
                f"The {param} '{file_id}' was deleted before the job could read it.",
                param,
            ) from None
        counter = token_counter(self._base_dirs[base_of(job)])
        limits = DatasetLimits(
            min_examples=self._settings.finetune_min_examples if param == "training_file" else 1,
            max_tokens=self._settings.finetune_max_length,
        )
        check = job_method(job["method"]["type"]).check
        checked: CheckedDataset = await asyncio.to_thread(check, raw, limits, counter)
        if not checked.ok:
            raise DatasetRejected(
                checked.errors[0].code, f"Invalid {param}: {checked.error_summary()}", param
            )
        return checked.examples, checked.warnings


@functools.lru_cache(maxsize=8)  # one tokenizer load per base, not per file checked
def token_counter(base_dir: Path) -> Callable[[str], int] | None:
    tokenizer_file = base_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        return None
    chat = chat_for_checks(base_dir)  # also renders each example as the trainer will
    if chat is not None:
        return chat
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
