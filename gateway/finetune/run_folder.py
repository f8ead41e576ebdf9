"""The run folder of a job (``<runs_dir>/<job id>/``): what its trainer reads.

``train.jsonl`` and ``valid.jsonl`` (the checked examples), ``job.json`` (what
to train: ``tuner.job_spec.JobSpec``), and ``start_adapter/`` (a copy of the
adapter a job continues, since that adapter may be deleted while the job waits
or trains). Every file goes through one of two methods: the one place where a write can
fail (a full disk) or be watched (``write_file``, ``copy_file``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from adapters.manifest import AdapterManifest
from adapters.validation import CONFIG_FILE, WEIGHTS_FILE
from gateway.finetune.jobs_store import base_of
from gateway.finetune.trial import trainer_extras
from tuner import hyperparameters as hp
from tuner.dataset import to_jsonl


class RunFolderWriter:
    def __init__(self, runs_dir: Path, base_dirs: dict[str, Path], max_length: int) -> None:
        self._runs_dir = runs_dir
        self._base_dirs = base_dirs
        self._max_length = max_length

    def folder(self, job_id: str) -> Path:
        return self._runs_dir / job_id

    def write(
        self,
        job: dict[str, Any],
        train: list,
        valid: list,
        plan: hp.Hyperparameters,
        parent: AdapterManifest | None,
        parent_folder: Path | None,
    ) -> Path:
        """Write the run folder afresh; ``parent_folder`` holds the adapter continued."""
        run_dir = self.folder(job["id"])
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        self.write_file(run_dir / "train.jsonl", to_jsonl(train))
        if valid:
            self.write_file(run_dir / "valid.jsonl", to_jsonl(valid))
        start_adapter = None
        if parent is not None and parent_folder is not None:
            start_adapter = run_dir / "start_adapter"
            start_adapter.mkdir()
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                self.copy_file(parent_folder / name, start_adapter / name)
        spec = {
            "base_dir": str(self._base_dirs[base_of(job)]),
            "method": job["method"]["type"],
            "method_options": plan.trainer_options(),
            "start_adapter": str(start_adapter) if start_adapter else None,
            "n_epochs": plan.n_epochs,
            "batch_size": plan.batch_size,
            "learning_rate": plan.learning_rate,
            "seed": job["seed"],
            "integrations": job.get("integrations") or [],  # read by tuner.integrations
            "max_length": self._max_length,
            "lora": {
                "rank": plan.lora_rank,
                "alpha": plan.lora_alpha,
                "target_modules": plan.lora_target_modules,
            },
        }
        spec.update(trainer_extras(job, spec))  # checks after training, a trial run
        self.write_file(run_dir / "job.json", json.dumps(spec, indent=2).encode())
        return run_dir

    def write_file(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)

    def copy_file(self, source: Path, target: Path) -> None:
        shutil.copyfile(source, target)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)
