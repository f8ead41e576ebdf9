"""Merged models: an adapter merged into its base and exported to GGUF, served on llama.cpp.

A merge runs in the background, one at a time, in a subprocess
(``python -m tuner.export``); its status is kept in SQLite:
``queued → running → succeeded | failed``. The result is the model
``<adapter id>:gguf-<quantization>`` (for example
``ft:smollm2-135m-instruct:local:jsonbot:ftjob-1:gguf-q8_0``), the file
``<data root>/merged/<model id>.gguf`` with a ``.json`` manifest beside it.
The manifest is written last: a GGUF without one is never served, and
leftovers of an interrupted export are removed at start.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from gateway.adapter_service import AdapterService
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine
from gateway.errors import ConflictError, InvalidRequestError, NotFoundError
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings
from tuner.export import QUANTIZATIONS

DEFAULT_QUANTIZATION = "q8_0"
_PATHS = re.compile(r"(/[^\s'\"]+)+")


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
    ) -> None:
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
        for merge in self._with_status("queued", "running"):
            self._update(
                merge["id"],
                status="failed",
                finished_at=int(time.time()),
                error={
                    "code": "server_restarted",
                    "param": None,
                    "message": "The gateway restarted during this merge; request it again.",
                },
            )
        for manifest_file in sorted(self.folder.glob("*.json")):
            manifest = json.loads(manifest_file.read_text())
            gguf = self.folder / f"{manifest['id']}.gguf"
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
            merge = self._update(merge_id, status="running")
            adapter = self._adapters.registry.get(merge["adapter"])
            gguf = self.folder / f"{merge['model']}.gguf"
            work = self._settings.runs_dir / merge_id
            work.mkdir(parents=True, exist_ok=True)
            log_path = work / "export.log"
            with log_path.open("wb") as log_file:
                process = await self._guard.spawn(
                    [
                        sys.executable,
                        "-m",
                        "tuner.export",
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
            if returncode != 0 or not gguf.is_file():
                gguf.unlink(missing_ok=True)
                reason = _last_line(log_path)
                self._update(
                    merge_id,
                    status="failed",
                    finished_at=int(time.time()),
                    error={
                        "code": "export_failed",
                        "param": None,
                        "message": f"The merge failed: {reason}",
                    },
                )
                return
            manifest = {
                "id": merge["model"],
                "adapter": adapter.id,
                "base": adapter.base,
                "quantization": merge["quantization"],
                "bytes": gguf.stat().st_size,
                "created_at": int(time.time()),
                "merge_id": merge_id,
            }
            staging = self.folder / f".{merge['model']}.json.partial"
            staging.write_text(json.dumps(manifest, indent=2))
            os.replace(staging, self.folder / f"{merge['model']}.json")
            self._catalog.add(self._entry(manifest))
            self._update(merge_id, status="succeeded", finished_at=int(time.time()))

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

    def _update(self, merge_id: str, **changes: Any) -> dict[str, Any]:
        merge = {**self.get(merge_id), **changes}
        self._db.execute(
            "UPDATE merges SET status = ?, body = ? WHERE id = ?",
            (merge["status"], json.dumps(merge), merge_id),
        )
        return merge

    def _with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT body FROM merges WHERE status IN ({marks})", statuses
        ).fetchall()
        return [json.loads(r["body"]) for r in rows]

    def _with_model(self, model_id: str) -> bool:
        return any(m["model"] == model_id for m in self._with_status("queued", "running"))


def _last_line(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    text = lines[-1] if lines else "no output"
    return _PATHS.sub("<path>", text.removeprefix("export failed: "))[:300]
