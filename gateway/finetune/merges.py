"""Merged models: an adapter merged into its base and exported to GGUF, served on llama.cpp.

A merge runs in the background, one at a time, in a subprocess
(``python -m tuner.export``); its status is kept in SQLite:
``queued → running → succeeded | failed``. The result is the model
``<adapter id>:gguf-<quantization>`` (for example
``ft:smollm2-135m-instruct:local:jsonbot:ftjob-1:gguf-q8_0``), the file
``<data root>/merged/<model id>.gguf`` with a ``.json`` manifest beside it.
The manifest is written last (whole, fsynced): a GGUF without one is never
served, and leftovers of an interrupted export are removed at start; a torn
manifest is moved aside with a log line and start-up goes on.

A merge runs under a guard: whatever goes wrong (its adapter deleted during
the export, a full disk, an export that fails) ends it ``failed`` with a code
(``adapter_deleted``, ``disk_full``, ``export_failed``) and removes what it
wrote; it never stays ``running``. Status changes are compare-and-set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from adapters.errors import AdapterNotFoundError
from adapters.manifest import quarantine, write_atomic
from gateway.adapter_service import AdapterService
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine
from gateway.errors import ConflictError, InvalidRequestError, NotFoundError
from gateway.finetune.hooks import StageHooks
from gateway.finetune.stage_guard import describe
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings
from tuner.export import QUANTIZATIONS

log = logging.getLogger(__name__)

DEFAULT_QUANTIZATION = "q8_0"
_PATHS = re.compile(r"(/[^\s'\"]+)+")
_ACTIVE = ("queued", "running")


class _MergeFailed(Exception):
    """A merge ends failed with this code and message (no paths)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class MergeNotFoundError(NotFoundError):
    default_code = "merge_not_found"

    def __init__(self, merge_id: str) -> None:
        super().__init__(f"No merge '{merge_id[:100]}'.", param="merge_id")


def merged_model_id(adapter_id: str, quantization: str) -> str:
    return f"{adapter_id}:gguf-{quantization}"


def check_quantization(value: Any) -> str:
    if not isinstance(value, str) or value not in QUANTIZATIONS:
        raise InvalidRequestError(
            f"'quantization' must be one of {', '.join(sorted(QUANTIZATIONS))}.",
            param="quantization",
            code="invalid_quantization",
        )
    return str(value)


def export_quantization(item: str) -> str:
    """A job's ``export`` item: ``"gguf"`` (q8_0) or ``"gguf:<quantization>"``."""
    kind, _, quantization = item.partition(":")
    if kind != "gguf":
        raise InvalidRequestError(
            '\'export\' items are "gguf" or "gguf:<quantization>".', param="export"
        )
    return check_quantization(quantization or DEFAULT_QUANTIZATION)


class MergeService:
    def __init__(
        self,
        settings: Settings,
        db: sqlite3.Connection,
        adapters: AdapterService,
        catalog: ModelCatalog,
        engines: dict[str, Engine],
        base_dirs: dict[str, Path],
        guard: ProcessGuard,
        hooks: StageHooks | None = None,
    ) -> None:
        self.hooks = hooks or StageHooks()  # where tests hold a merge or inject a fault
        self.export_module = "tuner.export"  # tests run a stand-in
        self._settings = settings
        self._guard = guard
        self._db = db
        self._adapters = adapters
        self._catalog = catalog
        self._engines = engines
        self._base_dirs = base_dirs
        self.folder = settings.data_root / "merged"
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".*.partial"):
            leftover.unlink(missing_ok=True)
        for gguf in self.folder.glob("*.gguf"):  # renamed into place, but never registered
            if not gguf.with_suffix(".json").is_file():
                gguf.unlink(missing_ok=True)
        for merge in self._with_status(*_ACTIVE):
            self._fail(
                merge["id"],
                "server_restarted",
                "The gateway restarted during this merge; request it again.",
            )
        for manifest_file in sorted(self.folder.glob("*.json")):
            try:
                manifest = json.loads(manifest_file.read_text())
                gguf = self.folder / f"{manifest['id']}.gguf"
            except (OSError, ValueError, TypeError, KeyError) as error:
                quarantine(manifest_file, type(error).__name__)
                # Its GGUF can no longer be served; it is removed at the next start.
                continue
            if (
                gguf.is_file()
                and manifest["id"] not in self._catalog
                and manifest["adapter"] in self._catalog
            ):
                self._catalog.add(self._entry(manifest))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    # --- API ------------------------------------------------------------------
    def request(self, adapter_name: str, quantization: str | None) -> dict[str, Any]:
        quantization = check_quantization(quantization or DEFAULT_QUANTIZATION)
        adapter = self._adapters.get(adapter_name)
        if "llama.cpp" not in self._engines:
            raise InvalidRequestError(
                "llama.cpp is turned off here (llamacpp_enabled).", param="model"
            )
        model_id = merged_model_id(adapter.id, quantization)
        if model_id in self._catalog or self._with_model(model_id):
            raise ConflictError(f"'{model_id}' exists or is being made.", param="quantization")
        merge = {
            "id": "merge-" + secrets.token_hex(10),
            "object": "adapter.merge",
            "created_at": int(time.time()),
            "finished_at": None,
            "adapter": adapter.id,
            "quantization": quantization,
            "model": model_id,
            "status": "queued",
            "error": None,
        }
        self._db.execute(
            "INSERT INTO merges (id, status, body) VALUES (?,?,?)",
            (merge["id"], merge["status"], json.dumps(merge)),
        )
        task = asyncio.create_task(self._run(merge["id"]), name=merge["id"])
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return merge

    def get(self, merge_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT body FROM merges WHERE id = ?", (merge_id,)).fetchone()
        if row is None:
            raise MergeNotFoundError(merge_id)
        return json.loads(row["body"])

    def list(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT body FROM merges ORDER BY seq DESC").fetchall()
        return [json.loads(r["body"]) for r in rows]

    async def wait(self, merge_id: str) -> dict[str, Any]:
        while (merge := self.get(merge_id))["status"] in ("queued", "running"):
            await asyncio.sleep(0.5)
        return merge

    async def remove(self, model_id: str) -> None:
        entry = self._catalog.resolve(model_id)
        if entry.kind != "merged":
            raise NotFoundError(f"'{model_id}' is not a merged model.", param="model")
        await self._engines[entry.engine_key].unload(entry)
        self._catalog.remove(entry.id)
        (self.folder / f"{entry.id}.json").unlink(
            missing_ok=True
        )  # manifest first: never half-served
        (self.folder / f"{entry.id}.gguf").unlink(missing_ok=True)

    # --- the work ---------------------------------------------------------------
    async def _run(self, merge_id: str) -> None:
        async with self._lock:
            if not self._transition(merge_id, ("queued",), "running"):
                return
            try:
                await self._export(merge_id)
            except asyncio.CancelledError:
                self._remove_outputs(self.get(merge_id))
                raise  # the gateway is stopping: failed at the next start
            except Exception as error:
                if isinstance(error, _MergeFailed):
                    code, message = error.code, error.message
                elif isinstance(error, AdapterNotFoundError):
                    code, message = _adapter_deleted()
                else:
                    log.exception("merge %s failed", merge_id)
                    code, message = describe("merge", error)
                self._remove_outputs(self.get(merge_id))
                self._fail(merge_id, code, message)

    async def _export(self, merge_id: str) -> None:
        merge = self.get(merge_id)
        adapter = self._adapters.registry.get(merge["adapter"])
        gguf = self.folder / f"{merge['model']}.gguf"
        self.folder.mkdir(parents=True, exist_ok=True)
        work = self._settings.runs_dir / merge_id
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / "export.log"
        with log_path.open("wb") as log_file:
            process = await self._guard.spawn(
                [
                    sys.executable,
                    "-m",
                    self.export_module,
                    "--base",
                    str(self._base_dirs[adapter.base]),
                    "--adapter",
                    str(self._adapters.registry.folder_of(adapter.id)),
                    "--out",
                    str(gguf),
                    "--quantization",
                    merge["quantization"],
                    "--work",
                    str(work / "work"),
                ],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            returncode = await process.wait()
            self._guard.forget(process.pid)
        if not self._adapter_exists(adapter.id):  # deleted while it was exported
            raise _MergeFailed(*_adapter_deleted())
        if returncode != 0 or not gguf.is_file():
            raise _MergeFailed("export_failed", f"The merge failed: {_last_line(log_path)}")
        await self.hooks.reach("merge_exported", merge_id=merge_id, adapter_id=adapter.id)
        if not self._adapter_exists(adapter.id):
            raise _MergeFailed(*_adapter_deleted())
        manifest = {
            "id": merge["model"],
            "adapter": adapter.id,
            "base": adapter.base,
            "quantization": merge["quantization"],
            "bytes": gguf.stat().st_size,
            "created_at": int(time.time()),
            "merge_id": merge_id,
        }
        self.write_manifest(
            self.folder / f"{merge['model']}.json", json.dumps(manifest, indent=2).encode()
        )
        self._catalog.add(self._entry(manifest))
        if not self._transition(merge_id, ("running",), "succeeded", finished_at=int(time.time())):
            self._catalog.remove(manifest["id"])
            raise _MergeFailed("merge_cancelled", "The merge was stopped.")
        shutil.rmtree(self._settings.runs_dir / merge_id / "work", ignore_errors=True)

    def write_manifest(self, path: Path, data: bytes) -> None:
        """The one place a merge manifest is written (whole and fsynced)."""
        write_atomic(path, data)

    def _adapter_exists(self, adapter_id: str) -> bool:
        if adapter_id not in self._catalog:  # a delete drops the catalog row first
            return False
        try:
            self._adapters.registry.get(adapter_id)
        except AdapterNotFoundError:
            return False
        return True

    def _remove_outputs(self, merge: dict[str, Any]) -> None:
        """What a failed merge wrote: its GGUF, its manifest, its work folder."""
        if merge["model"] in self._catalog:
            return  # served: a merge that succeeded is removed through remove()
        (self.folder / f"{merge['model']}.json").unlink(missing_ok=True)
        (self.folder / f"{merge['model']}.gguf").unlink(missing_ok=True)
        for leftover in self.folder.glob(f".{merge['model']}.*partial"):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(self._settings.runs_dir / merge["id"] / "work", ignore_errors=True)

    def _fail(self, merge_id: str, code: str, message: str) -> bool:
        error = {"code": code, "param": None, "message": message}
        return self._transition(
            merge_id, _ACTIVE, "failed", finished_at=int(time.time()), error=error
        )

    def _transition(
        self, merge_id: str, from_statuses: tuple[str, ...], to: str, **changes: Any
    ) -> bool:
        """Compare and set: only a merge still in ``from_statuses`` changes."""
        merge = self.get(merge_id)
        if merge["status"] not in from_statuses:
            log.info("merge %s: %s -> %s refused, it is %s", merge_id, from_statuses, to,
                     merge["status"])  # fmt: skip
            return False
        merge.update(changes, status=to)
        marks = ",".join("?" * len(from_statuses))
        done = self._db.execute(
            f"UPDATE merges SET status = ?, body = ? WHERE id = ? AND status IN ({marks})",
            (to, json.dumps(merge), merge_id, *from_statuses),
        )
        return done.rowcount == 1

    def _entry(self, manifest: dict[str, Any]) -> ModelEntry:
        adapter = self._catalog.resolve(manifest["adapter"])
        return ModelEntry(
            id=manifest["id"],
            kind="merged",
            engine="llama.cpp",
            engine_key="llama.cpp",
            weights=self.folder / f"{manifest['id']}.gguf",
            owned_by=adapter.owned_by,
            parent=manifest["adapter"],
            root=manifest["base"],
            created=manifest["created_at"],
            extra={
                "quantization": manifest["quantization"],
                "bytes": manifest["bytes"],
                "source": {"adapter": manifest["adapter"], "merge_id": manifest["merge_id"]},
            },
        )

    def _with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT body FROM merges WHERE status IN ({marks})", statuses
        ).fetchall()
        return [json.loads(r["body"]) for r in rows]

    def _with_model(self, model_id: str) -> bool:
        return any(m["model"] == model_id for m in self._with_status("queued", "running"))


def _adapter_deleted() -> tuple[str, str]:
    return "adapter_deleted", "The adapter was deleted during the merge; its files are removed."


def _last_line(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    text = lines[-1] if lines else "no output"
    return _PATHS.sub("<path>", text.removeprefix("export failed: "))[:300]
