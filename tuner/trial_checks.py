"""The checks after every training, in the trainer process: samples, drift and repetition.

They use the model the trainer holds (base + new LoRA; the base by switching
the adapter off), so they cost seconds and no engine:

- **samples**: a few held-out prompts (never trained on) answered by the base
  and by the adapter, beside the answer the data asks for;
- **drift** (``tuner.drift``): the general prompts shipped with the package;
- **repetition** (``tuner.repetition``): the adapter's answers to the held-out
  prompts and to the general prompts that take several steps, against the
  base's answers to the same prompts.

Past a threshold, each emits a ``warning`` event (a warn-level job event).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.base_answers import keep, read_cached
from tuner.dataset import content_text
from tuner.drift import general_prompts, measure_drift
from tuner.preference_dataset import preferred_text, prompt_of
from tuner.repetition import compare
from tuner.trial_generation import Messages, mixed_greedy_answers

SAMPLE_COUNT = 3
ANSWER_TOKENS = 64  # long enough for a loop to show, short enough for a CPU
GENERAL_SHOWN = (0, 1)  # the general prompts whose answers the checks show side by side


@dataclass(frozen=True)
class BaseAnswers:
    """Where the base is, and where its answers to the general prompts are kept (if any)."""

    dir: Path
    cache_dir: Path | None = None


def _chat_prompt(example: dict[str, Any]) -> tuple[Messages, str]:
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    return messages[:last], content_text(messages[last].get("content"))


def _pair_prompt(pair: dict[str, Any]) -> tuple[Messages, str]:
    return prompt_of(pair), preferred_text(pair)


# Method -> (one cleaned example -> its prompt and the answer the data asks for).
PROMPT_AND_ANSWER: dict[str, Callable[[dict[str, Any]], tuple[Messages, str]]] = {
    "supervised": _chat_prompt,
    "dpo": _pair_prompt,
}


def run_checks(
    model: Any,
    tokenizer: Any,
    method: str,
    held_out: list[dict[str, Any]],
    emit_warning: Callable[[str], None],
    base: BaseAnswers,
) -> dict[str, Any]:
    """Samples on ``held_out`` examples, drift and repetition; the dict for the result event."""
    started = time.monotonic()
    general = general_prompts()
    pairs = [PROMPT_AND_ANSWER[method](e) for e in held_out[:SAMPLE_COUNT]]
    held_prompts = [p for p, _ in pairs]
    general_messages = [g.messages for g in general]
    cached = read_cached(general_messages, ANSWER_TOKENS, base.dir, base.cache_dir)
    general_asks = [] if cached is not None else general_messages
    # The adapter answers only what is read: the general prompts shown side by side,
    # the multi-step ones (repetition) and the held-out ones.
    multi_step = [i for i, g in enumerate(general) if g.multi_step]
    asked = sorted({*GENERAL_SHOWN, *multi_step} & set(range(len(general))))
    base_asks = [*general_asks, *held_prompts]
    tuned_asks = [*(general[i].messages for i in asked), *held_prompts]
    answers = mixed_greedy_answers(
        model,
        tokenizer,
        [(m, False) for m in base_asks] + [(m, True) for m in tuned_asks],
        ANSWER_TOKENS,
    )
    fresh_general, held_base, tuned_general, held_tuned = _cut(
        answers, len(general_asks), len(held_prompts), len(asked), len(held_prompts)
    )
    general_base = cached
    if general_base is None:  # made in this batch: kept for the next job on this base
        general_base = fresh_general
        keep(general_base, general_messages, ANSWER_TOKENS, base.dir, base.cache_dir)
    general_tuned = dict(zip(asked, tuned_general, strict=True))
    drift = measure_drift(model, tokenizer, general_messages, general_base)
    repetition = compare(
        [general_tuned[i] for i in multi_step] + held_tuned,
        [general_base[i] for i in multi_step] + held_base,
    )
    for warning in (drift.warning(), repetition.warning()):
        if warning:
            emit_warning(warning)
    return {
        "drift": drift.as_dict(),
        "repetition": repetition.as_dict(),
        "samples": [
            {
                "prompt": prompt,
                "expected": expected,
                "base_answer": held_base[i],
                "fine_tuned_answer": held_tuned[i],
            }
            for i, (prompt, expected) in enumerate(pairs)
        ],
        # Two general prompts side by side: what the drift figure means, in words.
        "general_samples": [
            {
                "prompt": general[i].messages,
                "base_answer": general_base[i],
                "fine_tuned_answer": general_tuned[i],
            }
            for i in GENERAL_SHOWN
            if i < len(general)
        ],
        "seconds": round(time.monotonic() - started, 2),
    }


def _cut(items: list[str], *sizes: int) -> list[list[str]]:
    """``items`` in consecutive pieces of ``sizes``."""
    pieces, start = [], 0
    for size in sizes:
        pieces.append(items[start : start + size])
        start += size
    return pieces


def base_for_checks(spec: Any) -> BaseAnswers:
    """The run's base, and the cache folder the gateway named for its answers (if any)."""
    cache_dir = json.loads((spec.run_dir / "job.json").read_text()).get("checks_cache_dir")
    return BaseAnswers(Path(spec.base_dir), Path(cache_dir) if cache_dir else None)


def after_job(
    spec: Any, method: Any, model: Any, tokenizer: Any, events: Any
) -> dict[str, Any] | None:
    """The checks of a finished job, for its result event (``checks``); None, and a warning
    event, if they fail: a check never fails the job whose adapter is trained and saved."""
    options = json.loads((spec.run_dir / "job.json").read_text()).get("checks")
    if options is None:  # a run that the gateway did not start (tests, benchmarks): none asked
        return None
    try:
        return _after_job(spec, method, model, tokenizer, events, options)
    except Exception as exc:  # the traceback goes to the run's log
        import traceback

        traceback.print_exc()
        events.emit("warning", message=f"The checks after training failed: {type(exc).__name__}")
        return None


def _after_job(
    spec: Any, method: Any, model: Any, tokenizer: Any, events: Any, options: dict[str, Any]
) -> dict[str, Any]:
    """The checks of a finished job.

    The held-out prompts are the validation set's; a set without one (under the automatic
    split's size) gets a leave-some-out fold when the gateway asks for it, and its samples
    come from the fold's adapter (``tuner.trial_holdout``).
    """
    from tuner.trial_fit import load_examples
    from tuner.trial_holdout import pick_fold, run_fold

    def emit_warning(message: str) -> None:
        events.emit("warning", message=message)

    train = load_examples(spec.train_file)
    valid = load_examples(spec.valid_file)
    small = not valid and bool(options.get("small_set_fold")) and len(train) >= 4
    held_out = valid or (pick_fold(train, spec.seed)[1] if small else train)
    checks = run_checks(
        model, tokenizer, spec.method, held_out, emit_warning, base_for_checks(spec)
    )
    checks["samples_held_out"] = bool(valid)
    if small:
        checks["held_out"] = run_fold(spec, method, tokenizer, train, emit_warning)
    return checks
