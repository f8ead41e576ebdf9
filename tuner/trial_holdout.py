"""Held-out figures for sets too small for the automatic split: a leave-some-out fold.

A job on fewer examples than the automatic split needs (50) trains its
adapter on all of them, so nothing it saw can tell whether it overfits. After
that training, the trainer trains once more, with the same plan, on the set
less a seeded fold (a quarter, at least 2 examples), scoring the fold before
training and after each epoch. That gives what a user reads for a larger set:

- a held-out loss per epoch (and before training), in the job's events, its
  results file and ``/ui``;
- the overfitting alarm (held-out loss up while training loss falls) as a
  warning event;
- the ``/ui`` samples: the fold's prompts answered by the base and by the fold's
  adapter, which never saw them.

It costs about three quarters of the job's training again (the measured cost is
in docs/benchmarks.md); the setting ``finetune_small_set_holdout`` turns it
off. The adapter served is still the one trained on every example.
"""

from __future__ import annotations

import random
import time
from typing import Any

from tuner.trial_checks import PROMPT_AND_ANSWER, SAMPLE_COUNT
from tuner.trial_fit import prepare, train
from tuner.trial_generation import mixed_greedy_answers

FOLD_FRACTION = 0.25
MIN_FOLD = 2
MAX_FOLD = 12
SAMPLE_TOKENS = 64


def pick_fold(
    examples: list[dict[str, Any]], seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rest, fold): a seeded quarter of the set, 2 to 12 examples, leaving at least 2."""
    order = examples[:]
    random.Random(seed).shuffle(order)
    size = min(MAX_FOLD, max(MIN_FOLD, round(FOLD_FRACTION * len(order))), len(order) - 2)
    return order[size:], order[:size]


def overfitting_warning(curve: list[dict[str, Any]]) -> str | None:
    """The job's own alarm: the held-out loss rose between two epochs while training loss fell."""
    for earlier, later in zip(curve, curve[1:], strict=False):
        if (
            later["valid_loss"] > earlier["valid_loss"]
            and later["train_loss"] is not None
            and earlier["train_loss"] is not None
            and later["train_loss"] < earlier["train_loss"]
        ):
            return (
                f"On a held-out fold of this small set, the held-out loss rose to "
                f"{later['valid_loss']:.4f} at epoch {later['epoch']:g} while the training loss "
                f"fell to {later['train_loss']:.4f}: the model may be overfitting; fewer epochs "
                "or more data may serve it better."
            )
    return None


def curve_of(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(epoch, last training loss, held-out loss) at each evaluation of the trainer's log."""
    curve, train_loss = [], None
    for entry in log_history:
        if "loss" in entry:
            train_loss = float(entry["loss"])
        if "eval_loss" in entry:
            curve.append(
                {
                    "epoch": round(float(entry.get("epoch", 0.0)), 3),
                    "train_loss": train_loss,
                    "valid_loss": float(entry["eval_loss"]),
                }
            )
    return curve


def run_fold(
    spec: Any, method: Any, tokenizer: Any, examples: list[dict[str, Any]], emit_warning: Any
) -> dict[str, Any]:
    started = time.monotonic()
    rest, fold = pick_fold(examples, spec.seed)
    fit = prepare(spec, method, tokenizer, rest, fold, "held-out-fold", {"eval_strategy": "epoch"})
    before = fit.held_out_loss()
    curve = curve_of(train(fit).trainer.state.log_history)
    warning = overfitting_warning(curve)
    if warning:
        emit_warning(warning)
    pairs = [PROMPT_AND_ANSWER[spec.method](e) for e in fold[:SAMPLE_COUNT]]
    prompts = [p for p, _ in pairs]
    asks = [(p, False) for p in prompts] + [(p, True) for p in prompts]
    answers = mixed_greedy_answers(fit.model, tokenizer, asks, SAMPLE_TOKENS)
    base, tuned = answers[: len(prompts)], answers[len(prompts) :]
    return {
        "method": "leave-some-out",
        "train_examples": len(rest),
        "held_out_examples": len(fold),
        "held_out_loss_before": round(before, 4),
        "held_out_loss": round(min(c["valid_loss"] for c in curve), 4) if curve else None,
        "held_out_loss_last": round(curve[-1]["valid_loss"], 4) if curve else None,
        "curve": curve,
        "overfitting": warning is not None,
        "samples": [
            {"prompt": p, "expected": e, "base_answer": b, "fine_tuned_answer": t}
            for (p, e), b, t in zip(pairs, base, tuned, strict=True)
        ],
        "seconds": round(time.monotonic() - started, 1),
    }
