"""One extra, throw-away training in the trainer process: a trial, its control, a held-out fold.

Same method, base, LoRA and optimiser settings as the job (``tuner.job``'s own
``load_model`` and ``shared_arguments``), but no checkpoints, its own output
folder, and optionally a cap on the steps. The adapter stays in memory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.methods import TrainerSetup, TrainingMethod

# Set by torchrun for each rank; an extra training runs in one process, on its own.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")


@dataclass
class Fit:
    trainer: Any
    setup_seconds: float
    train_seconds: float = 0.0
    trained_tokens: int = 0
    epochs: float = 0.0  # epochs actually run (a cap on the steps may stop one early)
    steps: int = 0  # optimizer steps actually run

    @property
    def model(self) -> Any:
        return self.trainer.model

    def held_out_loss(self) -> float:
        return float(self.trainer.evaluate()["eval_loss"])


def load_examples(*paths: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in paths
        if path.is_file()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def prepare(
    spec: Any,
    method: TrainingMethod,
    tokenizer: Any,
    train: list[dict[str, Any]],
    held_out: list[dict[str, Any]],
    name: str,
    overrides: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
) -> Fit:
    """A fresh adapter on the base and its trainer, ready to train (``train``)."""
    from tuner.job import load_model, shared_arguments

    for variable in _LAUNCHER_VARIABLES:
        os.environ.pop(variable, None)
    started = time.monotonic()
    model, lora = load_model(spec)
    train_rows = [row for e in train for row in method.to_rows(e)]
    held_rows = [row for e in held_out for row in method.to_rows(e)]
    arguments = {
        **shared_arguments(spec, bool(held_rows), len(train_rows), 1),
        "output_dir": str(spec.run_dir / name),
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "metric_for_best_model": None,
        "greater_is_better": None,
        **(overrides or {}),
    }
    trainer = method.build_trainer(
        TrainerSetup(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            train_rows=train_rows,
            valid_rows=held_rows,
            arguments=arguments,
            lora=lora,
            callbacks=callbacks or [],
        )
    )
    return Fit(trainer, setup_seconds=time.monotonic() - started)


def train(fit: Fit) -> Fit:
    output = fit.trainer.train()
    fit.train_seconds = float(output.metrics.get("train_runtime", 0.0))
    fit.trained_tokens = _trained_tokens(fit.trainer)
    fit.epochs = float(fit.trainer.state.epoch or 0.0)
    fit.steps = int(fit.trainer.state.global_step)
    return fit


def stop_after(seconds: float | None, min_steps: int) -> list[Any]:
    """A callback that ends the training at the first step past ``seconds`` of it (but not
    before ``min_steps``); none without a bound. A trial's time is bounded this way on any
    data: a step of long rows costs many times one of short ones."""
    if not seconds:
        return []
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            self.started = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step >= min_steps and time.monotonic() - self.started >= seconds:
                control.should_training_stop = True

    return [StopAfter()]


def _trained_tokens(trainer: Any) -> int:
    """Tokens the run went through: the trainer's own count where it logs one."""
    counts = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    if counts:
        return int(max(counts))
    dataset = trainer.train_dataset
    per_epoch = sum(len(i) for i in dataset["input_ids"]) if "input_ids" in dataset.features else 0
    return int(per_epoch * float(trainer.state.epoch or 0))
