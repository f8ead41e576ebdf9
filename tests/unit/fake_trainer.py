"""A stand-in for ``python -m tuner.job`` in fast unit tests of the job machinery.

It speaks the trainer's event protocol without training: two steps an epoch,
a checkpoint (an adapter copied from ``FAKE_TRAINER["adapter"]``) each epoch,
a pause when ``RUN_DIR/pause`` exists, a resume from the step it last saved.
``FAKE_TRAINER`` (JSON in the environment) also says how long a step takes
and where to crash: ``crash_at`` (every run) or ``crash_once_at``. An exception
(a full disk) is an ``error`` event and exit status 1, as ``tuner.job`` reports it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

STEPS_PER_EPOCH = 2


def emit(kind: str, **data: object) -> None:
    print(json.dumps({"type": kind, **data}), flush=True)


def copy_adapter(template: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template, target)
    return target


def main() -> int:
    try:
        return train(Path(sys.argv[1]))
    except Exception as exc:  # reported as tuner.job reports it (a full disk, say)
        emit("error", message=f"{type(exc).__name__}: {exc}"[:500])
        return 1


def train(run_dir: Path) -> int:
    options = json.loads(os.environ.get("FAKE_TRAINER", "{}"))
    template = Path(options["adapter"])
    spec = json.loads((run_dir / "job.json").read_text())
    total = spec["n_epochs"] * STEPS_PER_EPOCH
    state_file = run_dir / "fake-state.json"
    start = json.loads(state_file.read_text())["step"] if state_file.is_file() else 0
    with (run_dir / "fake-runs.jsonl").open("a") as runs:
        runs.write(json.dumps({"started": time.time(), "from_step": start}) + "\n")
    if start:
        emit("resumed", step=start)
    for step in range(start + 1, total + 1):
        time.sleep(options.get("step_s", 0.05))
        crash_once = options.get("crash_once_at") == step and not (run_dir / "crashed").exists()
        if options.get("crash_at") == step or crash_once:
            (run_dir / "crashed").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        emit("progress", step=step, total_steps=total, epoch=step / 2, train_loss=1.0 / step)
        paused = (run_dir / "pause").exists() and step < total
        if step % STEPS_PER_EPOCH == 0 or paused:
            servable = copy_adapter(template, run_dir / "servable" / f"ckpt-step-{step}")
            state_file.write_text(json.dumps({"step": step}))
            emit("checkpoint", step=step, epoch=step / 2, adapter_dir=str(servable),
                 train_loss=1.0 / step, valid_loss=None)  # fmt: skip
        if paused:
            emit("paused", step=step)
            return 0
    adapter = copy_adapter(template, run_dir / "adapter")
    emit("result", adapter_dir=str(adapter), steps=total, trained_tokens=10 * total,
         train_loss=0.5, valid_loss=None, train_seconds=0.1)  # fmt: skip
    with (run_dir / "fake-runs.jsonl").open("a") as runs:
        runs.write(json.dumps({"ended": time.time()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
