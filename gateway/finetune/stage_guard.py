"""The guard every stage of a job runs under: any exception fails the job, never strands it.

A stage (validate, run, succeed, export) that raises anything but a
cancellation ends its job ``failed`` with a code and a message written for
users: the code is ``disk_full`` when the disk is full, else the stage's own
(``STAGE_CODES``); the message names the cause in words (``describe``), never
a path or a traceback (those go to the gateway's log). The job's trainer, if
one still runs, is stopped first, so that no orphan keeps training while its
slot is reused. A job no longer active (cancelled meanwhile) stays as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable

from adapters.errors import AdapterError
from gateway.errors import TunegateError

log = logging.getLogger(__name__)

STAGE_CODES = {
    "validate": "validation_failed",
    "run": "training_failed",
    "succeed": "registration_failed",
    "export": "export_failed",
    "merge": "export_failed",
}
STAGE_WORDS = {
    "validate": "Validating the files",
    "run": "Training",
    "succeed": "Registering the trained adapter",
    "export": "Starting the export",
    "merge": "The merge",
}
# Causes whose words say more than "an internal error", by exception type.
_CAUSES: tuple[tuple[type[BaseException], str], ...] = (
    (FileNotFoundError, "a file it needs is missing (was it deleted?)"),
    (PermissionError, "permission was denied on a file it needs"),
    (sqlite3.Error, "the job database could not be written"),
    (OSError, "a file operation failed"),
)

# (job id, code, message) -> False when the job was no longer active
Fail = Callable[[str, str, str], bool]
StopTrainer = Callable[[str], Awaitable[None]]


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.OperationalError):  # SQLITE_FULL
        return "disk is full" in str(error)
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def describe(stage: str, error: BaseException) -> tuple[str, str]:
    """(code, message) for a stage that raised ``error``."""
    if is_disk_full(error):
        return "disk_full", f"{STAGE_WORDS[stage]} failed: the disk is full."
    if isinstance(error, (TunegateError, AdapterError)):
        return STAGE_CODES[stage], f"{STAGE_WORDS[stage]} failed: {error.message}"
    cause = next(
        (words for kind, words in _CAUSES if isinstance(error, kind)),
        "an internal error (the gateway's log has the details)",
    )
    return STAGE_CODES[stage], f"{STAGE_WORDS[stage]} failed: {cause}."


class StageGuard:
    def __init__(self, fail: Fail, stop_trainer: StopTrainer) -> None:
        self._fail = fail
        self._stop_trainer = stop_trainer

    @contextlib.asynccontextmanager
    async def stage(self, job_id: str, stage: str) -> AsyncIterator[None]:
        try:
            yield
        except asyncio.CancelledError:
            raise  # the gateway is stopping: the job carries on at the next start
        except Exception as error:
            log.exception("job %s: the %s stage failed", job_id, stage)
            await self.fail_job(job_id, stage, error)

    async def fail_job(self, job_id: str, stage: str, error: BaseException) -> None:
        try:
            await self._stop_trainer(job_id)
        except Exception:
            log.exception("job %s: could not stop its trainer", job_id)
        code, message = describe(stage, error)
        try:
            self._fail(job_id, code, message)
        except Exception:  # the database itself failed: the next start finds the job again
            log.exception("job %s: could not record its failure (%s)", job_id, code)
