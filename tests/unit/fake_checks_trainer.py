"""A stand-in trainer that reports the checks after training (and a trial's report).

It reads ``job.json`` as ``tuner.job`` does: with a ``trial`` block it answers
as a trial (no adapter), else it trains nothing, copies the adapter of
``FAKE_TRAINER["adapter"]`` and reports checks, with a held-out fold when
``checks.small_set_fold`` is set and there is no ``valid.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.unit.fake_trainer import copy_adapter, emit

SAMPLE = {
    "prompt": [{"role": "user", "content": "Capital of Peru?"}],
    "expected": '{"answer": "Lima"}',
    "base_answer": "Lima is the capital.",
    "fine_tuned_answer": '{"answer": "Lima"}',
}
CHECKS = {
    "drift": {"prompts": 12, "kl": 0.21, "nll_increase": 0.3},
    "repetition": {"prompts": 7, "mean": 0.02, "base_mean": 0.01, "looping": 0,
                   "base_looping": 0, "worst_answer": ""},
    "samples": [SAMPLE],
    "general_samples": [],
    "seconds": 1.5,
}  # fmt: skip


def main() -> int:
    run_dir = Path(sys.argv[1])
    spec = json.loads((run_dir / "job.json").read_text())
    emit("progress", step=1, total_steps=1, epoch=1.0, train_loss=1.0)
    checks = dict(CHECKS, samples_held_out=(run_dir / "valid.jsonl").is_file())
    if spec.get("trial"):
        report = {"learns": True, "verdict": "content", "reason": "fake",
                  "held_out_loss_before": 2.0, "held_out_loss_after": 1.0,
                  "control_held_out_loss_after": 1.8, "estimated_full_run_s": 60.0,
                  "samples": [], "examples": spec["trial"]["examples"]}  # fmt: skip
        emit("result", adapter_dir=None, steps=1, trained_tokens=10, train_loss=None,
             valid_loss=1.0, train_seconds=0.1, trial_report=report, checks=checks)  # fmt: skip
        return 0
    if spec.get("checks", {}).get("small_set_fold") and not checks["samples_held_out"]:
        checks["held_out"] = {
            "method": "leave-some-out", "train_examples": 9, "held_out_examples": 3,
            "held_out_loss_before": 2.0, "held_out_loss": 1.1, "held_out_loss_last": 1.2,
            "curve": [{"epoch": 1.0, "train_loss": 1.0, "valid_loss": 1.1}],
            "overfitting": False, "samples": [SAMPLE], "seconds": 2.0,
        }  # fmt: skip
    template = Path(json.loads(os.environ["FAKE_TRAINER"])["adapter"])
    adapter = copy_adapter(template, run_dir / "adapter")
    measured = checks if "checks" in spec else None  # as tuner.job: no block, no checks
    emit("result", adapter_dir=str(adapter), steps=1, trained_tokens=10, train_loss=0.5,
         valid_loss=None, train_seconds=0.1, checks=measured)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
