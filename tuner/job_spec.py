"""What a run folder asks the trainer to do: ``RUN_DIR/job.json`` as a ``JobSpec``.

Its own module so that the run loop (``tuner.job``) and the methods
(``tuner.methods``, ``tuner.sft``, ``tuner.dpo``) both read it without
importing each other; it imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.pause import PAUSE_FILE


@dataclass(frozen=True)
class LoraOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class JobSpec:
    base_dir: Path
    run_dir: Path
    n_epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    lora: LoraOptions
    max_length: int
    method: str = "supervised"
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. DPO's beta
    # An adapter (PEFT folder) whose weights the new adapter starts from; None: a fresh LoRA.
    start_adapter: Path | None = None

    @property
    def train_file(self) -> Path:
        return self.run_dir / "train.jsonl"

    @property
    def valid_file(self) -> Path:
        return self.run_dir / "valid.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def servable_dir(self) -> Path:
        """Checkpoint adapters, copied out for the gateway to register."""
        return self.run_dir / "servable"

    @property
    def pause_file(self) -> Path:
        return self.run_dir / PAUSE_FILE

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> JobSpec:
        data = json.loads((run_dir / "job.json").read_text())
        lora = data["lora"]
        start = data.get("start_adapter")
        return cls(
            base_dir=Path(data["base_dir"]),
            run_dir=run_dir,
            n_epochs=data["n_epochs"],
            batch_size=data["batch_size"],
            learning_rate=data["learning_rate"],
            seed=data["seed"],
            lora=LoraOptions(lora["rank"], lora["alpha"], 0.0, lora["target_modules"]),
            max_length=data["max_length"],
            method=data.get("method", "supervised"),
            method_options=data.get("method_options", {}),
            start_adapter=Path(start) if start else None,
        )
