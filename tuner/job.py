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
    {"type": "checkpoint", "step", "epoch", "adapter_dir", "train_loss", "valid_loss",
     ...the method's train and valid metrics}
    {"type": "resumed", "step"}
    {"type": "paused", "step"}
    {"type": "warning", "message"}
    {"type": "result", "adapter_dir", "steps", "trained_tokens", "train_loss", "valid_loss",
     "train_seconds", "setup_seconds"}

The method's metrics are those in ``TRAIN_METRICS`` and ``VALID_METRICS``
(``tuner.methods``) that its trainer logs. Everything the libraries print goes
to stderr (the run's log). The adapter saved is the checkpoint with the lowest
validation loss when there is validation data, else the last one.

Run again on the same RUN_DIR, the trainer resumes from its last sealed
checkpoint (see ``tuner.checkpointing``), with the optimizer, scheduler and
RNG state it had. Under torchrun or ``accelerate launch`` every rank runs this
module; only rank 0 emits events and saves the result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from tuner.checkpointing import checkpoint_step, latest_resumable, make_checkpoint_callback
from tuner.distributed import Rank, finish, pin_to_cpus
from tuner.dpo import DPO
from tuner.integrations import report_to
from tuner.job_spec import JobSpec, LoraOptions
from tuner.methods import TRAIN_METRICS, TrainerSetup, TrainingMethod, pick_metrics
from tuner.parent_death import arm_for_this_process_tree
from tuner.pause import make_pause_callback
from tuner.sft import SUPERVISED
from tuner.trial import run_trial, trial_options
from tuner.trial_checks import after_job

METHODS: dict[str, TrainingMethod] = {"supervised": SUPERVISED, "dpo": DPO}

__all__ = ["METHODS", "JobSpec", "LoraOptions", "run"]


class EventSink:
    """Writes one JSON event per line to the stream the gateway reads (None: rank > 0)."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream

    def emit(self, kind: str, **data: Any) -> None:
        if self._stream is None:
            return
        self._stream.write(json.dumps({"type": kind, **data}) + "\n")
        self._stream.flush()


def _load_rows(path: Path, method: TrainingMethod) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as lines:
        return [row for line in lines if line.strip() for row in method.to_rows(json.loads(line))]


def make_callback(events: EventSink):  # the transformers import stays inside run()
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Turns the trainer's logs into progress and warning events (checkpoint events
        come from ``tuner.checkpointing``, once a save is sealed)."""

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
            self.train_metrics = pick_metrics(logs, TRAIN_METRICS)
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
            valid = _maybe_float((metrics or {}).get("eval_loss"))
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

    return ProgressCallback()


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)


def shared_arguments(
    spec: JobSpec, has_valid: bool, train_rows: int, world_size: int
) -> dict[str, Any]:
    """The training arguments every method uses: schedule, logging, eval, checkpoints."""
    import torch

    # The job's batch size is the global one: each of N ranks takes its share.
    per_rank_batch = max(1, -(-spec.batch_size // world_size))
    return {
        "output_dir": str(spec.checkpoints_dir),
        "num_train_epochs": spec.n_epochs,
        "per_device_train_batch_size": per_rank_batch,
        "per_device_eval_batch_size": per_rank_batch,
        "learning_rate": spec.learning_rate,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": min(5, max(1, train_rows // spec.batch_size)),
        "logging_steps": 1,
        "eval_strategy": "epoch" if has_valid else "no",
        # A checkpoint each epoch (and on a pause), with the optimizer, scheduler and RNG
        # state, so that a run can resume; the best and the latest are kept.
        "save_strategy": "epoch",
        "save_only_model": False,
        "save_total_limit": 2,
        "load_best_model_at_end": has_valid,
        "metric_for_best_model": "eval_loss" if has_valid else None,
        "greater_is_better": False if has_valid else None,
        "report_to": report_to(spec.run_dir),  # the job's integrations (W&B)
        "seed": spec.seed,
        "data_seed": spec.seed,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": True,
        **precision_arguments(torch),
    }


def precision_arguments(torch: Any) -> dict[str, Any]:
    """Mixed precision and gradient checkpointing only where they pay.

    TRL's configs turn both on by default. On a CPU (or a GPU without bf16) bf16
    autocast emulates its matmuls, some 50x slower than fp32 on a CPU without
    native bf16, and checkpointing re-runs every forward pass to save memory a
    LoRA run on a CPU does not need.
    """
    fast_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {"bf16": fast_bf16, "fp16": False, "gradient_checkpointing": fast_bf16}


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


def run(spec: JobSpec, events: EventSink, rank: Rank | None = None) -> None:
    rank = rank or Rank()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer

    method = METHODS[spec.method]
    torch.manual_seed(spec.seed)
    if trial_options(spec.run_dir) is not None:  # a trial run on a sample: tuner.trial
        return run_trial(spec, events, method)
    train_rows = _load_rows(spec.train_file, method)
    valid_rows = _load_rows(spec.valid_file, method)
    model, lora = load_model(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_dir)
    pause = make_pause_callback(spec.pause_file)
    # Building a trainer tokenizes the data (and sets up the process group when launched
    # with one process per device); DPO's reference log-probs follow before the first step.
    building = time.monotonic()
    trainer = method.build_trainer(
        TrainerSetup(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            train_rows=train_rows,
            valid_rows=valid_rows,
            arguments=shared_arguments(spec, bool(valid_rows), len(train_rows), rank.world_size),
            lora=lora,
            callbacks=[
                make_callback(events),
                make_checkpoint_callback(events, spec.servable_dir),
                pause,
            ],
        )
    )
    setup_seconds = time.monotonic() - building
    resume_from = _resume_point(spec, events, rank)
    if resume_from is not None:
        events.emit("resumed", step=checkpoint_step(resume_from))
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    if pause.paused_at is not None and state.global_step < state.max_steps:
        events.emit("paused", step=state.global_step)
        return
    _save_adapter(trainer, spec.adapter_dir, rank)
    if not rank.is_main:
        return
    checks = None  # held-out samples, drift and repetition (tuner.trial_checks): one process
    if rank.world_size == 1:
        checks = after_job(spec, method, trainer.model, tokenizer, events)
    events.emit(
        "result",
        checks=checks,
        adapter_dir=str(spec.adapter_dir),
        steps=output.global_step,
        trained_tokens=method.tokens_per_epoch(trainer) * spec.n_epochs,
        train_loss=float(output.training_loss),
        valid_loss=state.best_metric if valid_rows else None,
        train_seconds=float(output.metrics.get("train_runtime", 0.0)),
        setup_seconds=round(setup_seconds, 3),
    )


def _save_adapter(trainer: Any, folder: Path, rank: Rank) -> None:
    """The trained adapter alone, as safetensors."""
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # Every rank takes part: FSDP and DeepSpeed gather the sharded weights here.
        if trainer.is_fsdp_enabled:  # one file of adapter weights, not a shard per rank
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(folder))  # rank 0 writes
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle nobody needs
        return
    if rank.is_main:
        # Only the trained adapter: a method may hold others (DPO continuing an adapter
        # keeps a frozen reference copy of it).
        trainer.model.save_pretrained(
            str(folder), safe_serialization=True, selected_adapters=["default"]
        )


def _resume_point(spec: JobSpec, events: EventSink, rank: Rank) -> Path | None:
    """The sealed checkpoint to resume from: rank 0 checks, every rank uses its choice."""
    import torch.distributed as dist

    chosen: list[str | None] = [None]
    if rank.is_main:
        folder, notes = latest_resumable(spec.checkpoints_dir)
        for note in notes:
            events.emit("warning", message=note)
        chosen = [folder.name if folder else None]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(chosen, src=0)
    return spec.checkpoints_dir / chosen[0] if chosen[0] else None


def main(argv: list[str] | None = None) -> int:
    # First of all: under torchrun this rank is a grandchild of the gateway, in a session of
    # its own, so only its own death signal makes it die with its launcher.
    arm_for_this_process_tree()
    # Whatever a library asks for, torch.load only ever reads tensors and plain data here.
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    argv = sys.argv[1:] if argv is None else argv
    run_dir = Path(argv[0])
    rank = Rank.from_env()
    pin_to_cpus(rank)
    # Events own the real stdout (rank 0's); whatever the libraries print goes to stderr.
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1) if rank.is_main else None
    events = EventSink(stream)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        run(JobSpec.from_run_dir(run_dir), events, rank)
    except Exception as exc:  # reported as an event; the traceback stays in the log
        import traceback

        traceback.print_exc()
        events.emit("error", message=f"{type(exc).__name__}: {exc}"[:500])
        return 1
    finally:
        finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
