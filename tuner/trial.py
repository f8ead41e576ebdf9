"""A trial run: the job's method and settings on a sample of its data, bounded in time.

The gateway writes a normal run folder (the whole cleaned set in
``train.jsonl``/``valid.jsonl``, the full job's plan in ``job.json``) plus a
``trial`` block: ``{"examples": N, "max_steps": S, "max_train_s": T,
"held_out_fraction": f, "full_base_dir": path or null}``. The trainer then, in one
process:

1. samples N examples (seeded) and holds out a fraction of them (at least 2),
   even when the set is small: the trial is not the final model;
2. trains a fresh adapter on the rest with the job's settings, for at most S
   steps and about T seconds (whichever comes first; at least
   ``MIN_TRIAL_STEPS``), scoring the held-out part before and after. No warm-up:
   in a run of a few steps, a warm-up step at a learning rate of 0 is a step lost;
3. trains a control for as many steps on the same examples with the answers
   shuffled across prompts, and scores it on the same held-out part;
4. judges ``learns`` by ``tuner.trial_rule``, runs the checks of every job
   (``tuner.trial_checks``: held-out samples, drift, repetition) on the trial
   adapter, and estimates the full job's run time from the measured tokens/s;
5. emits one ``result`` event carrying ``trial_report``. No adapter is saved:
   a trial is a check, not a model.

With a smaller proxy base (``trial.model``), the trial trains on that base and
the estimate is scaled by the ratio of the two bases' weight sizes (training
compute grows with parameters x tokens).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.trial_checks import base_for_checks, run_checks
from tuner.trial_fit import Fit, load_examples, prepare, stop_after, train
from tuner.trial_rule import judge

DEFAULT_EXAMPLES = 32
DEFAULT_HELD_OUT_FRACTION = 0.25
MIN_HELD_OUT = 2
# Measured on the embedded model (capitals, JSON answers, a pirate voice against random
# codes; docs/benchmarks.md): 3-4 steps already separate learnable data from its control.
MIN_TRIAL_STEPS = 3
# What a finished job costs the gateway besides training and the trainer's checks:
# validation, registration, loading the adapter into vLLM, samples through the engine.
GATEWAY_OVERHEAD_S = 12.0
# A held-out fold on small sets (``tuner.trial_holdout``) trains on this share again.
FOLD_TRAIN_SHARE = 0.75


def trial_options(run_dir: Path) -> dict[str, Any] | None:
    return json.loads((run_dir / "job.json").read_text()).get("trial")


def sample_split(
    examples: list[dict[str, Any]], count: int, fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out) from a seeded sample of ``count`` examples; both keep at least 2."""
    rng = random.Random(seed)
    sample = rng.sample(examples, min(count, len(examples)))
    held = min(max(MIN_HELD_OUT, round(fraction * len(sample))), len(sample) - MIN_HELD_OUT)
    return sample[held:], sample[:held]


def _rotate_chat(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each example gets the next one's final assistant message."""

    def last(e: dict[str, Any]) -> int:
        return max(i for i, m in enumerate(e["messages"]) if m.get("role") == "assistant")

    out = []
    for i, example in enumerate(examples):
        donor = examples[(i + 1) % len(examples)]
        messages = list(example["messages"])
        messages[last(example)] = donor["messages"][last(donor)]
        out.append({**example, "messages": messages})
    return out


def _rotate_pairs(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each pair gets the next one's preferred and non-preferred answers."""
    out = []
    for i, pair in enumerate(pairs):
        donor = pairs[(i + 1) % len(pairs)]
        out.append(
            {
                **pair,
                "preferred_output": donor["preferred_output"],
                "non_preferred_output": donor["non_preferred_output"],
            }
        )
    return out


# Method -> examples with their answers moved to other prompts (a derangement for 2+).
SHUFFLE_ANSWERS: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] = {
    "supervised": _rotate_chat,
    "dpo": _rotate_pairs,
}


def shuffled_answers(method: str, examples: list[dict[str, Any]], seed: int) -> list[dict]:
    order = examples[:]
    random.Random(seed + 1).shuffle(order)
    return SHUFFLE_ANSWERS[method](order)


def run_trial(spec: Any, events: Any, method: Any) -> None:
    from transformers import AutoTokenizer

    from tuner.job import make_callback

    started = time.monotonic()
    options = trial_options(spec.run_dir) or {}
    full_train = load_examples(spec.train_file)
    full_valid = load_examples(spec.valid_file)
    train_set, held_out = sample_split(
        full_train + full_valid,
        int(options.get("examples") or DEFAULT_EXAMPLES),
        float(options.get("held_out_fraction") or DEFAULT_HELD_OUT_FRACTION),
        spec.seed,
    )
    steps = capped_steps(len(train_set), spec.batch_size, spec.n_epochs, options.get("max_steps"))
    tokenizer = AutoTokenizer.from_pretrained(spec.base_dir)
    cap = {"max_steps": steps, "eval_strategy": "no", "warmup_steps": 0}
    bound = stop_after(options.get("max_train_s"), MIN_TRIAL_STEPS)

    trial = prepare(
        spec, method, tokenizer, train_set, held_out, "trial", cap,
        [make_callback(events), *bound],
    )  # fmt: skip
    evaluating = time.monotonic()
    before = trial.held_out_loss()
    eval_seconds = time.monotonic() - evaluating
    after = train(trial).held_out_loss()
    checks = run_checks(
        trial.model,
        tokenizer,
        spec.method,
        held_out,
        lambda message: events.emit("warning", message=message),
        base_for_checks(spec),
    )
    steps = trial.steps  # the time bound may have stopped it early: the control matches
    trial.trainer = None  # free the first adapter before the control trains

    control = prepare(
        spec, method, tokenizer, shuffled_answers(spec.method, train_set, spec.seed),
        held_out, "control", {**cap, "max_steps": steps},
    )  # fmt: skip
    control_after = train(control).held_out_loss()
    verdict = judge(before, after, control_after)
    estimate = estimate_full_run(
        spec, trial, eval_seconds, held_out, train_set, full_train, full_valid, checks, options
    )
    report = {
        "examples": len(train_set) + len(held_out),
        "train_examples": len(train_set),
        "held_out_examples": len(held_out),
        "steps": steps,
        "held_out_loss_before": round(before, 4),
        "held_out_loss_after": round(after, 4),
        "control_held_out_loss_after": round(control_after, 4),
        "learns": verdict.learns,
        "verdict": verdict.kind,
        "reason": verdict.reason,
        "samples": [
            {
                "prompt": s["prompt"],
                "base_answer": s["base_answer"],
                "trial_answer": s["fine_tuned_answer"],
                "expected": s["expected"],
            }
            for s in checks["samples"]
        ],
        "drift": checks["drift"],
        "repetition": checks["repetition"],
        **estimate,
        "trial_seconds": round(time.monotonic() - started, 1),
    }
    events.emit(
        "result",
        adapter_dir=None,
        steps=steps,
        trained_tokens=trial.trained_tokens,
        train_loss=None,
        valid_loss=round(after, 4),
        train_seconds=round(trial.train_seconds, 3),
        setup_seconds=round(trial.setup_seconds, 3),
        trial_report=report,
        checks=checks,
    )


def capped_steps(train_examples: int, batch_size: int, epochs: int, cap: int | None) -> int:
    planned = math.ceil(train_examples / max(1, batch_size)) * epochs
    return max(1, min(planned, int(cap))) if cap else planned


def estimate_full_run(
    spec: Any,
    trial: Fit,
    eval_seconds: float,
    held_out: list[dict[str, Any]],
    train_set: list[dict[str, Any]],
    full_train: list[dict[str, Any]],
    full_valid: list[dict[str, Any]],
    checks: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The full job's seconds from what the trial measured.

    training: the full set's tokens (the trial's tokens per character of data, times the
    set's characters) x the job's epochs / the trial's tokens per second; plus evaluating
    the validation rows each epoch at the trial's evaluation speed; plus the held-out fold
    of small sets; plus setting up, the checks and the gateway's own steps.
    """
    epochs_run = max(1e-9, trial.epochs)
    tokens_per_s = trial.trained_tokens / trial.train_seconds if trial.train_seconds else 0.0
    tokens_per_char = trial.trained_tokens / epochs_run / max(1, _chars(train_set))
    train_tokens = _chars(full_train) * tokens_per_char * spec.n_epochs
    scale = _size_ratio(options.get("full_base_dir"), spec.base_dir)
    train_s = train_tokens / tokens_per_s * scale if tokens_per_s else 0.0
    eval_s = eval_seconds * _chars(full_valid) / max(1, _chars(held_out)) * spec.n_epochs * scale
    fold_s = 0.0
    if not full_valid and options.get("small_set_fold"):
        fold_s = FOLD_TRAIN_SHARE * train_s + trial.setup_seconds
    total = trial.setup_seconds + train_s + eval_s + fold_s + checks["seconds"] + GATEWAY_OVERHEAD_S
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "estimated_full_run_s": round(total, 1),
        "estimate": {
            "full_examples": len(full_train) + len(full_valid),
            "full_train_tokens": int(train_tokens),
            "n_epochs": spec.n_epochs,
            "training_s": round(train_s, 1),
            "validation_s": round(eval_s, 1),
            "held_out_fold_s": round(fold_s, 1),
            "fixed_s": round(trial.setup_seconds + checks["seconds"] + GATEWAY_OVERHEAD_S, 1),
            "proxy_scale": round(scale, 3),
        },
    }


def _chars(examples: list[dict[str, Any]]) -> int:
    return sum(len(json.dumps(e, ensure_ascii=False)) for e in examples)


def _size_ratio(full_base: str | None, trial_base: Path) -> float:
    """Weights of the job's base over the proxy's (1 without a proxy)."""
    if not full_base or Path(full_base) == Path(trial_base):
        return 1.0
    size = lambda folder: sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))  # noqa: E731
    proxy = size(trial_base)
    return size(full_base) / proxy if proxy else 1.0
