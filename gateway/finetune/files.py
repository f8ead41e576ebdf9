"""Uploaded files (``/v1/files``): content under ``<data root>/files/<id>``, rows in SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from gateway.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from gateway.finetune.pagination import page

PURPOSES = frozenset(
    {"fine-tune", "fine-tune-results", "assistants", "batch", "user_data", "vision", "evals"}
)
USER_PURPOSES = PURPOSES - {"fine-tune-results"}
_FILE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class UnknownFileError(NotFoundError):
    default_code = "file_not_found"

    def __init__(self, file_id: str, param: str = "file_id") -> None:
        super().__init__(f"No such file: '{file_id}'.", param=param)


class FileStore:
    def __init__(self, db: sqlite3.Connection, folder: Path, max_bytes: int) -> None:
        self._db = db
        self.folder = folder
        self._max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)

    async def create(self, stream: IO[bytes], filename: str, purpose: str) -> dict[str, Any]:
        """Store an upload atomically: copied and hashed into a temp file, then renamed, in a
        thread (a large upload would hold the event loop for seconds)."""
        file_id = "file-" + secrets.token_hex(12)
        size, digest = await asyncio.to_thread(self._write, stream, file_id)
        name = Path(filename or "upload").name[:255] or "upload"
        self._db.execute(
            "INSERT INTO files (id, bytes, created_at, filename, purpose, sha256)"
            " VALUES (?,?,?,?,?,?)",
            (file_id, size, int(time.time()), name, purpose, digest),
        )
        return self.get(file_id)

    async def create_from_bytes(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        return await self.create(io.BytesIO(data), filename, purpose)

    def _write(self, stream: IO[bytes], file_id: str) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        fd, temp = tempfile.mkstemp(prefix=".upload-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as target:
                while chunk := stream.read(1024 * 1024):
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise PayloadTooLargeError(f"Files may be at most {self._max_bytes} bytes.")
                    digest.update(chunk)
                    target.write(chunk)
                target.flush()
                os.fsync(target.fileno())
            os.replace(temp, self.folder / file_id)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def get(self, file_id: str, param: str = "file_id") -> dict[str, Any]:
        row = self._row(file_id, param)
        return _file_object(row)

    def sha256(self, file_id: str) -> str:
        return str(self._row(file_id, "file_id")["sha256"])

    def path(self, file_id: str, param: str = "file_id") -> Path:
        self._row(file_id, param)
        return self.folder / file_id

    def list(
        self, purpose: str | None, limit: int, after: str | None, order: str
    ) -> dict[str, Any]:
        if not 1 <= limit <= 10_000:
            raise InvalidRequestError("'limit' must be between 1 and 10000.", param="limit")
        if order not in ("asc", "desc"):
            raise InvalidRequestError("'order' must be 'asc' or 'desc'.", param="order")
        clauses, params = [], []
        if purpose:
            clauses.append("purpose = ?")
            params.append(purpose)
        if after:
            cursor = self._row(after, "after")["seq"]
            clauses.append("seq < ?" if order == "desc" else "seq > ?")
            params.append(cursor)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        direction = "DESC" if order == "desc" else "ASC"
        rows = self._db.execute(
            f"SELECT * FROM files {where} ORDER BY seq {direction} LIMIT ?", (*params, limit + 1)
        ).fetchall()
        return page([_file_object(r) for r in rows[:limit]], len(rows) > limit)

    async def delete(self, file_id: str) -> dict[str, Any]:
        self._row(file_id, "file_id")
        self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        # Freeing a large file's blocks can take a while: not on the event loop.
        await asyncio.to_thread((self.folder / file_id).unlink, missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def _row(self, file_id: str, param: str) -> sqlite3.Row:
        if not file_id or not set(file_id) <= _FILE_ID_CHARS:
            raise InvalidRequestError(f"Invalid file id: '{file_id[:64]}'.", param=param)
        row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            raise UnknownFileError(file_id, param)
        return row


def check_purpose(purpose: str) -> str:
    if purpose not in USER_PURPOSES:
        raise InvalidRequestError(
            f"'purpose' must be one of {', '.join(sorted(USER_PURPOSES))}.", param="purpose"
        )
    return purpose


def _file_object(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }
