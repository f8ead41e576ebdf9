"""What a training method is to the trainer: how its rows look, and how its TRL trainer is built.

``tuner.job`` owns the one run loop (load the model, build the trainer from
the method's entry, train, save the adapter, report); each method module
(``tuner.sft``, ``tuner.dpo``) supplies one ``TrainingMethod``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner.job_spec import JobSpec

if TYPE_CHECKING:  # the heavy imports stay inside the trainer process
    from transformers import Trainer


@dataclass(frozen=True)
class TrainerSetup:
    """Everything a method needs to build its trainer; the run loop fills it."""

    spec: JobSpec
    model: Any  # a transformers model, or a PeftModel when an adapter is continued
    tokenizer: Any
    train_rows: list[dict[str, Any]]
    valid_rows: list[dict[str, Any]]
    arguments: dict[str, Any]  # training arguments every method shares
    lora: Any | None  # a peft LoraConfig for a new adapter; None when continuing one
    callbacks: list[Any]


@dataclass(frozen=True)
class TrainingMethod:
    # One cleaned example (a line of train.jsonl) -> the rows the TRL trainer takes.
    to_rows: Callable[[dict[str, Any]], list[dict[str, Any]]]
    build_trainer: Callable[[TrainerSetup], Trainer]
    # Tokens one pass over the training set runs through the model.
    tokens_per_epoch: Callable[[Trainer], int]


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


def pick_metrics(logs: dict[str, Any], names: dict[str, str]) -> dict[str, float]:
    """The metrics of ``names`` that a trainer's log holds, under their event field names."""
    return {field: float(logs[key]) for key, field in names.items() if logs.get(key) is not None}
