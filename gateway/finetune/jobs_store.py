"""Fine-tuning jobs, their events and checkpoints, as OpenAI's objects, in SQLite."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

from gateway.errors import NotFoundError
from gateway.finetune.job_states import ACTIVE, TERMINAL, check_transition
from gateway.finetune.pagination import check_limit, page

log = logging.getLogger(__name__)

__all__ = ["TERMINAL", "JobNotFoundError", "JobStore", "base_of", "new_job_id", "public"]
# Private fields kept with a job but never shown to clients.
_PRIVATE_PREFIX = "_"


class JobNotFoundError(NotFoundError):
    default_code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No fine-tuning job '{job_id[:100]}'.", param="fine_tuning_job_id")


def base_of(job: dict[str, Any]) -> str:
    """The base model a job trains on: its ``model``, unless that is an adapter it continues."""
    return job.get("_base") or job["model"]  # jobs stored before adapters could be continued


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


class JobStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    # --- jobs -----------------------------------------------------------------
    def insert(self, job: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO jobs (id, status, body, updated_at) VALUES (?,?,?,?)",
            (job["id"], job["status"], json.dumps(job), int(time.time())),
        )

    def get(self, job_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return json.loads(row["body"])

    def update(self, job_id: str, **changes: Any) -> dict[str, Any]:
        """Change a job's fields other than its status (that is ``transition``'s alone)."""
        if "status" in changes:
            raise ValueError("a job's status changes only through transition()")
        with self._transaction():
            job = self.get(job_id)
            job.update(changes)
            self._db.execute(
                "UPDATE jobs SET body = ?, updated_at = ? WHERE id = ?",
                (json.dumps(job), int(time.time()), job_id),
            )
        return job

    def transition(
        self, job_id: str, from_statuses: Iterable[str], to: str, **changes: Any
    ) -> bool:
        """Move the job to ``to`` only if it is in one of ``from_statuses`` now (compare and
        set, with ``changes`` in the same write); False, logged, when it is not."""
        allowed = tuple(from_statuses)
        check_transition(allowed, to)
        marks = ",".join("?" * len(allowed))
        with self._transaction():
            job = self.get(job_id)
            if job["status"] not in allowed:
                log.info(
                    "job %s: %s -> %s refused, it is %s", job_id, "|".join(allowed), to,
                    job["status"],
                )  # fmt: skip
                return False
            job.update(changes, status=to)
            done = self._db.execute(
                f"UPDATE jobs SET status = ?, body = ?, updated_at = ? "
                f"WHERE id = ? AND status IN ({marks})",
                (to, json.dumps(job), int(time.time()), job_id, *allowed),
            )
        return done.rowcount == 1

    def fail(self, job_id: str, code: str, message: str, param: str | None = None) -> bool:
        """End an active job ``failed`` with an error and an event; False (nothing done)
        when it has ended already, a cancelled job for one: cancel wins."""
        error = {"code": code, "message": message, "param": param}
        if not self.finish(job_id, "failed", error=error):
            return False
        self.add_event(job_id, message, level="error", data={"code": code})
        return True

    def finish(self, job_id: str, status: str, **changes: Any) -> bool:
        """An active job ends ``status`` (failed, cancelled, succeeded from running)."""
        allowed = ("running",) if status == "succeeded" else ACTIVE
        return self.transition(
            job_id, allowed, status, finished_at=int(time.time()), estimated_finish=None, **changes
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE); nested calls join the outer one."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT body FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses
        ).fetchall()
        return [json.loads(r["body"]) for r in rows]

    def list(
        self, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        check_limit(limit)
        params: list[Any] = []
        where = ""
        if after:
            where = "WHERE seq < ?"
            params.append(self._seq("jobs", after, JobNotFoundError))
        rows = self._db.execute(
            f"SELECT body FROM jobs {where} ORDER BY seq DESC", params
        ).fetchall()
        jobs = [json.loads(r["body"]) for r in rows]
        if metadata:
            jobs = [
                j
                for j in jobs
                if all((j.get("metadata") or {}).get(k) == v for k, v in metadata.items())
            ]
        return page([public(j) for j in jobs[:limit]], len(jobs) > limit)

    # --- events -------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        message: str,
        level: str = "info",
        data: dict[str, Any] | None = None,
        kind: str = "message",
    ) -> dict[str, Any]:
        event = {
            "id": "ftevent-" + secrets.token_hex(12),
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": data,
            "type": kind,
        }
        self._db.execute(
            "INSERT INTO events (id, job_id, created_at, level, type, message, data)"
            " VALUES (?,?,?,?,?,?,?)",
            (event["id"], job_id, event["created_at"], level, kind, message, json.dumps(data)),
        )
        return event

    def events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        return self._job_page("events", _event, job_id, after, limit)

    def events_since(self, job_id: str, seq: int) -> list[tuple[int, dict[str, Any]]]:
        """Events after ``seq``, oldest first, with their sequence numbers (for live streams)."""
        rows = self._db.execute(
            "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, seq)
        ).fetchall()
        return [(r["seq"], _event(r)) for r in rows]

    # --- checkpoints --------------------------------------------------------
    def add_checkpoint(self, job_id: str, step: int, model: str, metrics: dict[str, Any]) -> bool:
        """Record a checkpoint; False when the job has one at ``step`` already (a resumed run)."""
        known = self._db.execute(
            "SELECT 1 FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step)
        ).fetchone()
        if known is not None:
            return False
        self._db.execute(
            "INSERT INTO checkpoints (id, job_id, created_at, step, model, metrics)"
            " VALUES (?,?,?,?,?,?)",
            (
                "ftckpt-" + secrets.token_hex(12),
                job_id,
                int(time.time()),
                step,
                model,
                json.dumps(metrics),
            ),
        )
        return True

    def remove_checkpoint(self, checkpoint_id: str) -> None:
        self._db.execute("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        return self._job_page("checkpoints", _checkpoint, job_id, after, limit)

    def all_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step, seq", (job_id,)
        ).fetchall()
        return [_checkpoint(r) for r in rows]

    def _job_page(
        self, table: str, to_object: Any, job_id: str, after: str | None, limit: int
    ) -> dict[str, Any]:
        """One page of a job's events or checkpoints, newest first, after the ``after`` id."""
        self.get(job_id)
        check_limit(limit)
        params: list[Any] = [job_id]
        where = "job_id = ?"
        if after:
            where += " AND seq < ?"
            params.append(self._seq(table, after, _unknown_cursor))
        rows = self._db.execute(
            f"SELECT * FROM {table} WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, limit + 1)
        ).fetchall()
        return page([to_object(r) for r in rows[:limit]], len(rows) > limit)

    def _seq(self, table: str, item_id: str, missing: Any) -> int:
        row = self._db.execute(f"SELECT seq FROM {table} WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise missing(item_id)
        return int(row["seq"])


def _unknown_cursor(item_id: str) -> NotFoundError:
    return NotFoundError(f"'after' names nothing known: '{item_id[:100]}'.", param="after")


def public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith(_PRIVATE_PREFIX)}


def _event(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "data": json.loads(row["data"]) if row["data"] else None,
        "type": row["type"],
    }


def _checkpoint(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["model"],
        "fine_tuning_job_id": row["job_id"],
        "metrics": json.loads(row["metrics"]),
        "step_number": row["step"],
    }
