"""A job's checkpoints as servable models: ``<job's model id>:ckpt-step-<N>``.

Each checkpoint the trainer announces is registered in the adapter registry
(its own copy of the weights, with the job in its lineage), so it is served on
vLLM like any adapter, loaded on first use. Being an adapter of its own, it
stays servable when the job's final model is deleted, until it is deleted
itself. The newest ``finetune_checkpoint_models`` of a job are kept, as OpenAI
keeps the last few; older ones are removed from the registry and the list.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError, AdapterExistsError, AdapterNotFoundError
from adapters.naming import DEFAULT_OWNER, make_adapter_id
from adapters.registry import RegisterRequest
from gateway.adapter_service import AdapterService
from gateway.errors import TunegateError
from gateway.finetune.jobs_store import JobStore, base_of

log = logging.getLogger(__name__)


def checkpoint_model_id(job: dict[str, Any], step: int) -> str:
    return str(make_adapter_id(base_of(job), job["_suffix"], job["id"], checkpoint_step=step))


class CheckpointModels:
    def __init__(
        self, adapters: AdapterService, store: JobStore, runs_dir: Path, keep: int
    ) -> None:
        self._adapters = adapters
        self._store = store
        self._runs_dir = runs_dir
        self._keep = keep

    async def register(
        self, job: dict[str, Any], step: int, adapter_dir: str | None, dataset_sha256: str | None
    ) -> str | None:
        """Register the checkpoint's adapter; returns why it is not servable, or None."""
        if self._keep == 0:
            return "checkpoint models are turned off (finetune_checkpoint_models)"
        folder = self._announced_folder(job["id"], adapter_dir)
        if folder is None:
            return "the trainer saved no adapter for it"
        request = RegisterRequest(
            folder=folder,
            base=base_of(job),
            suffix=job["_suffix"],
            owner=DEFAULT_OWNER,
            unique=job["id"],
            source={"job_id": job["id"], "checkpoint_step": step},
            dataset_sha256=dataset_sha256,
            checkpoint_step=step,
        )
        try:
            await self._adapters.register(request, extra_roots=(self._runs_dir,))
        except AdapterExistsError:
            pass  # announced again by a run that resumed before this step
        except (TunegateError, AdapterError) as error:
            return error.message
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)
        return None

    async def keep_newest(self, job_id: str) -> None:
        """Remove the job's checkpoint models past the newest ``keep``."""
        checkpoints = self._store.all_checkpoints(job_id)
        for old in checkpoints[: max(0, len(checkpoints) - self._keep)]:
            await self._remove_model(old["fine_tuned_model_checkpoint"])
            self._store.remove_checkpoint(old["id"])

    async def remove_all(self, job_id: str) -> None:
        for checkpoint in self._store.all_checkpoints(job_id):
            await self._remove_model(checkpoint["fine_tuned_model_checkpoint"])

    async def _remove_model(self, model_id: str) -> None:
        try:
            await self._adapters.remove(model_id)
        except AdapterNotFoundError:
            pass  # deleted by the user already
        except (TunegateError, AdapterError) as error:
            log.warning("could not remove checkpoint model %s: %s", model_id, error.message)

    def _announced_folder(self, job_id: str, adapter_dir: str | None) -> Path | None:
        """The folder the trainer named, only if it lies in the job's own run folder."""
        if not adapter_dir:
            return None
        folder = Path(adapter_dir)
        servable = (self._runs_dir / job_id / "servable").resolve()
        if folder.is_symlink() or folder.resolve().parent != servable or not folder.is_dir():
            return None
        return folder
