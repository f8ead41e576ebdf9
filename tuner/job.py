"""One fine-tuning job, run as a subprocess of the gateway.

    python -m tuner.job RUN_DIR

``RUN_DIR/job.json`` says what to train (written by the gateway): the method,
its hyperparameters, and optionally an adapter to continue from; the cleaned
``train.jsonl`` and optional ``valid.jsonl`` lie beside it. One run loop
serves every method: load the model (the base, or the base with the adapter
to continue), build the method's TRL trainer from the ``METHODS`` table,
train, save the adapter, report. Progress goes to the gateway as JSON lines
on stdout, each one event:

    {"type": "progress", "step", "total_steps", "epoch", "train_loss", "tokens_per_s", "eta_s",
     ...the method's train metrics}
    {"type": "checkpoint", "step", "epoch", "train_loss", "valid_loss",
     ...the method's train and valid metrics}
    {"type": "warning", "message"}
    {"type": "result", "adapter_dir", "steps", "trained_tokens", "train_loss", "valid_loss",
     "train_seconds", "setup_seconds"}

The method's metrics are those in ``TRAIN_METRICS`` and ``VALID_METRICS``
that its trainer logs. Everything the libraries print goes to stderr (the
run's log). The adapter saved is the checkpoint with the lowest validation
loss when there is validation data, else the last one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuner.dpo import DPO
from tuner.methods import TrainerSetup, TrainingMethod
from tuner.sft import SUPERVISED

METHODS: dict[str, TrainingMethod] = {"supervised": SUPERVISED, "dpo": DPO}

# Trainer log key -> event field. A method's trainer logs some of them; the others stay out.
TRAIN_METRICS = {
    "mean_token_accuracy": "train_mean_token_accuracy",
    "rewards/accuracies": "train_reward_accuracy",
    "rewards/margins": "train_reward_margin",
}
VALID_METRICS = {
    "eval_mean_token_accuracy": "valid_mean_token_accuracy",
    "eval_rewards/accuracies": "valid_reward_accuracy",
    "eval_rewards/margins": "valid_reward_margin",
}


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


class EventSink:
    """Writes one JSON event per line to the stream the gateway reads."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def emit(self, kind: str, **data: Any) -> None:
        self._stream.write(json.dumps({"type": kind, **data}) + "\n")
        self._stream.flush()


def _load_rows(path: Path, method: TrainingMethod) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [row for line in lines if line.strip() for row in method.to_rows(json.loads(line))]


def _pick(logs: dict[str, Any], names: dict[str, str]) -> dict[str, float]:
    return {field: float(logs[key]) for key, field in names.items() if logs.get(key) is not None}


def make_callback(events: EventSink):  # the transformers import stays inside run()
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Turns the trainer's logs into progress, checkpoint and warning events."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.train_loss: float | None = None
            self.train_metrics: dict[str, float] = {}
            self.previous: tuple[float, float] | None = None  # (train, valid) at last eval

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            logs = logs or {}
            if "loss" not in logs:
                return
            self.train_loss = float(logs["loss"])
            self.train_metrics = _pick(logs, TRAIN_METRICS)
            elapsed = time.monotonic() - self.started
            tokens = float(logs.get("num_tokens", 0.0))
            remaining = max(0, state.max_steps - state.global_step)
            events.emit(
                "progress",
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=round(float(state.epoch or 0), 3),
                train_loss=self.train_loss,
                **self.train_metrics,
                tokens_per_s=round(tokens / elapsed, 1) if elapsed > 0 else None,
                eta_s=round(elapsed / max(1, state.global_step) * remaining, 1),
            )

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # type: ignore[no-untyped-def]
            metrics = metrics or {}
            valid = _maybe_float(metrics.get("eval_loss"))
            self._checkpoint(state, valid, _pick(metrics, VALID_METRICS))
            if valid is None or self.train_loss is None:
                return
            if self.previous and valid > self.previous[1] and self.train_loss < self.previous[0]:
                events.emit(
                    "warning",
                    message=(
                        f"Validation loss rose to {valid:.4f} while training loss fell to "
                        f"{self.train_loss:.4f}: the model may be overfitting. The checkpoint "
                        "with the lowest validation loss is the one kept."
                    ),
                )
            self.previous = (self.train_loss, valid)

        def on_epoch_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if args.eval_strategy == "no":
                self._checkpoint(state, None, {})

        def _checkpoint(self, state, valid: float | None, valid_metrics: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
            events.emit(
                "checkpoint",
                step=state.global_step,
                epoch=round(float(state.epoch or 0), 3),
                train_loss=self.train_loss,
                **self.train_metrics,
                valid_loss=valid,
                **valid_metrics,
            )

    return ProgressCallback()


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)


def shared_arguments(spec: JobSpec, has_valid: bool, train_rows: int) -> dict[str, Any]:
    """The training arguments every method uses: schedule, logging, eval and best checkpoint."""
    import torch

    return {
        "output_dir": str(spec.run_dir / "checkpoints"),
        "num_train_epochs": spec.n_epochs,
        "per_device_train_batch_size": spec.batch_size,
        "per_device_eval_batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": min(5, max(1, train_rows // spec.batch_size)),
        "logging_steps": 1,
        "eval_strategy": "epoch" if has_valid else "no",
        "save_strategy": "epoch" if has_valid else "no",
        "save_only_model": True,
        "save_total_limit": 2 if has_valid else None,
        "load_best_model_at_end": has_valid,
        "metric_for_best_model": "eval_loss" if has_valid else None,
        "greater_is_better": False if has_valid else None,
        "report_to": [],
        "seed": spec.seed,
        "data_seed": spec.seed,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
    }


def load_model(spec: JobSpec) -> tuple[Any, Any | None]:
    """The base in fp32, plus either a new LoRA's config or the adapter to continue (trainable)."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec.base_dir, dtype=torch.float32)
    if spec.start_adapter is not None:
        return PeftModel.from_pretrained(model, spec.start_adapter, is_trainable=True), None
    lora = LoraConfig(
        r=spec.lora.rank,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return model, lora


def run(spec: JobSpec, events: EventSink) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer

    method = METHODS[spec.method]
    torch.manual_seed(spec.seed)
    train_rows = _load_rows(spec.train_file, method)
    valid_rows = _load_rows(spec.valid_file, method)
    model, lora = load_model(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_dir)
    # Building a trainer tokenizes the data, and for DPO computes the reference's log-probs.
    building = time.monotonic()
    trainer = method.build_trainer(
        TrainerSetup(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            train_rows=train_rows,
            valid_rows=valid_rows,
            arguments=shared_arguments(spec, bool(valid_rows), len(train_rows)),
            lora=lora,
            callbacks=[make_callback(events)],
        )
    )
    setup_seconds = time.monotonic() - building
    output = trainer.train()
    # Only the trained adapter: a method may hold others (DPO keeps a frozen reference copy).
    trainer.model.save_pretrained(
        spec.adapter_dir, safe_serialization=True, selected_adapters=["default"]
    )
    events.emit(
        "result",
        adapter_dir=str(spec.adapter_dir),
        steps=output.global_step,
        trained_tokens=method.tokens_per_epoch(trainer) * spec.n_epochs,
        train_loss=float(output.training_loss),
        valid_loss=trainer.state.best_metric if valid_rows else None,
        train_seconds=float(output.metrics.get("train_runtime", 0.0)),
        setup_seconds=round(setup_seconds, 3),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir = Path(argv[0])
    # Events own the real stdout; whatever the libraries print goes to stderr.
    events = EventSink(os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        run(JobSpec.from_run_dir(run_dir), events)
    except Exception as exc:  # reported as an event; the traceback stays in the log
        import traceback

        traceback.print_exc()
        events.emit("error", message=f"{type(exc).__name__}: {exc}"[:500])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
