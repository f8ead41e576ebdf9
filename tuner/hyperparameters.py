"""Turning OpenAI's hyperparameters (numbers or "auto") into a training plan.

Epochs follow OpenAI's published rule: 3 epochs, but at least ~100 example
passes for small datasets (at most 25 epochs) and at most ~25,000 for large
ones. The learning rate is a LoRA rate times ``learning_rate_multiplier``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
# A rate that suits LoRA on small instruct models; multiplier "auto" = 1.
LORA_BASE_LEARNING_RATE = 1e-3
DEFAULT_LORA_RANK = 8

Auto = Literal["auto"]


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    lora_rank: int
    lora_alpha: int
    lora_target_modules: str | list[str]

    @property
    def learning_rate(self) -> float:
        return LORA_BASE_LEARNING_RATE * self.learning_rate_multiplier

    def openai_view(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "lora_target_modules": self.lora_target_modules,
        }

    def trainer_options(self) -> dict[str, Any]:
        """The method's own settings for the trainer (``method_options`` in job.json)."""
        return {}

    def summary(self) -> str:
        return (
            f"{self.n_epochs} epochs, batch size {self.batch_size}, "
            f"learning rate {self.learning_rate:g}, LoRA rank {self.lora_rank}"
        )


def auto_epochs(n_examples: int) -> int:
    epochs = TARGET_EPOCHS
    if n_examples * epochs < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(1, n_examples)))
    elif n_examples * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


# (fewer than N examples, batch size): small data gets small batches, so more optimizer steps.
_AUTO_BATCH_SIZES = ((32, 4), (128, 8))
_LARGE_BATCH_SIZE = 16


def auto_batch_size(n_examples: int) -> int:
    return next(
        (size for limit, size in _AUTO_BATCH_SIZES if n_examples < limit), _LARGE_BATCH_SIZE
    )


def resolve(requested: dict[str, Any], n_examples: int) -> Hyperparameters:
    def pick(name: str, auto: Any) -> Any:
        value = requested.get(name, "auto")
        return auto if value in (None, "auto") else value

    rank = int(pick("lora_rank", DEFAULT_LORA_RANK))
    return Hyperparameters(
        n_epochs=int(pick("n_epochs", auto_epochs(n_examples))),
        batch_size=min(int(pick("batch_size", auto_batch_size(n_examples))), max(1, n_examples)),
        learning_rate_multiplier=float(pick("learning_rate_multiplier", 1.0)),
        lora_rank=rank,
        lora_alpha=int(pick("lora_alpha", 2 * rank)),
        lora_target_modules=pick("lora_target_modules", "all-linear"),
    )
