"""Resumable checkpoints that the trainer trusts because it sealed them itself.

The trainer (transformers' ``Trainer``) saves ``checkpoints/checkpoint-<step>/``
each epoch and on a pause: the adapter weights (safetensors), the optimizer,
scheduler and RNG state, and the trainer state. Once every rank has written its
part, rank 0 *seals* the folder: ``seal.json``, written last and atomically,
lists every file with its SHA-256.

On resume only a sealed folder whose files all match their seal is read back,
so what is loaded is exactly what this job wrote: not a half-written save from
a crash, not a file put there by anyone else, not a folder reached through a
link. The torch files in it are loaded with ``weights_only=True`` (transformers
does so, and ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` makes sure no library can ask
for more); the adapter weights are safetensors.

Each sealed checkpoint's adapter is also copied to ``servable/ckpt-step-<N>/``
for the gateway to register as the model ``<job's model>:ckpt-step-<N>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from tuner.methods import TRAIN_METRICS, VALID_METRICS, pick_metrics

SEAL_FILE = "seal.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d{1,9})$")
SERVABLE_FILES = ("adapter_model.safetensors", "adapter_config.json")
_CHUNK = 1024 * 1024


def checkpoint_step(folder: Path) -> int | None:
    match = CHECKPOINT_PATTERN.match(folder.name)
    return int(match.group(1)) if match else None


def seal(folder: Path, step: int) -> None:
    """Record every file of a finished save; the seal itself is written last."""
    files = {
        str(path.relative_to(folder)): _sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != SEAL_FILE
    }
    staging = folder / f".{SEAL_FILE}.partial"
    with staging.open("w") as out:
        json.dump({"step": step, "files": files}, out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, folder / SEAL_FILE)


def why_not_resumable(folder: Path, checkpoints_dir: Path) -> str | None:
    """None when ``folder`` is a checkpoint this job sealed and nobody changed since."""
    if folder.is_symlink() or not folder.is_dir():
        return "not a folder of its own"
    if folder.resolve().parent != checkpoints_dir.resolve():
        return "outside the job's checkpoints"
    try:
        sealed = json.loads((folder / SEAL_FILE).read_text())
        listed: dict[str, str] = sealed["files"]
        step = sealed["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "not sealed (the save did not finish)"
    if step != checkpoint_step(folder):
        return "its seal names another step"
    present = {
        str(path.relative_to(folder)): path
        for path in folder.rglob("*")
        if path.name not in (SEAL_FILE, f".{SEAL_FILE}.partial") and not path.is_dir()
    }
    if set(present) != set(listed):
        return "its files are not the ones sealed"
    for name, path in present.items():
        if path.is_symlink() or not path.is_file():
            return f"{name} is not a plain file"
        if _sha256(path) != listed[name]:
            return f"{name} changed after it was sealed"
    return None


def latest_resumable(checkpoints_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that may be resumed from, and why newer ones were passed over.

    Passed-over folders are removed: they are either the remains of an
    interrupted save or not this job's, and the trainer would otherwise rotate
    or overwrite around them.
    """
    if not checkpoints_dir.is_dir():
        return None, []
    candidates = sorted(
        (step, path)
        for path in checkpoints_dir.iterdir()
        if (step := checkpoint_step(path)) is not None
    )
    notes: list[str] = []
    for step, folder in reversed(candidates):
        reason = why_not_resumable(folder, checkpoints_dir)
        if reason is None:
            return folder, notes
        notes.append(f"The checkpoint at step {step} was not used: {reason}.")
        _remove(folder)
    return None, notes


def export_servable(folder: Path, target: Path) -> Path | None:
    """Copy a checkpoint's adapter where the gateway can register it from."""
    if not all((folder / name).is_file() for name in SERVABLE_FILES):
        return None
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SERVABLE_FILES:
        shutil.copyfile(folder / name, staging / name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def checkpoint_metrics(log_history: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """The train metrics last logged up to ``step``, and the eval metrics at ``step``:
    the losses, and whichever of the methods' metrics the trainer logged."""
    train = next((e for e in reversed(log_history) if "loss" in e and e.get("step", 0) <= step), {})
    evaluated = next(
        (e for e in reversed(log_history) if "eval_loss" in e and e.get("step") == step), {}
    )
    return {
        "train_loss": _maybe_float(train.get("loss")),
        **pick_metrics(train, TRAIN_METRICS),
        "valid_loss": _maybe_float(evaluated.get("eval_loss")),
        **pick_metrics(evaluated, VALID_METRICS),
    }


def make_checkpoint_callback(events: Any, servable_dir: Path):  # transformers imported late
    from transformers import TrainerCallback

    from tuner.distributed import barrier

    class CheckpointCallback(TrainerCallback):
        """Seals each save, exports its adapter and tells the gateway (rank 0).

        A step may be saved twice (a pause at an epoch's end, or the epoch's end
        right after a pause): each save is sealed, the gateway hears of it once.
        """

        def __init__(self) -> None:
            self.announced: set[int] = set()

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            barrier()  # every rank has written its part (RNG state) before the seal
            if not state.is_world_process_zero:
                return
            step = state.global_step
            folder = Path(args.output_dir) / f"checkpoint-{step}"
            if not folder.is_dir():
                return
            seal(folder, step)
            if step in self.announced:
                return
            self.announced.add(step)
            servable = export_servable(folder, servable_dir / f"ckpt-step-{step}")
            events.emit(
                "checkpoint",
                step=step,
                epoch=round(float(state.epoch or 0), 3),
                adapter_dir=str(servable) if servable else None,
                **checkpoint_metrics(state.log_history, step),
            )

    return CheckpointCallback()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(folder: Path) -> None:
    if folder.is_symlink() or folder.is_file():
        folder.unlink(missing_ok=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)
