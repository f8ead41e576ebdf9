"""The DPO method: TRL's DPOTrainer on OpenAI's preference pairs, with a LoRA.

The loss is DPO's (sigmoid) plus a supervised term on the preferred answers
(TRL: ``loss_type=["sigmoid", "sft"]``). DPO alone, on a small model with a
LoRA at the learning rates that move behaviour, lowers the likelihood of both
answers until the text degenerates; the supervised term keeps the preferred
answers likely while DPO pushes them apart from the others.

The reference model is where training starts: the base for a new LoRA
(adapters disabled), or a frozen copy of the adapter being continued (TRL
adds it as the ``ref`` adapter). Its log-probabilities are computed once,
before the first step, rather than again in every epoch.
"""

from __future__ import annotations

import json
from typing import Any

from tuner.methods import TrainerSetup, TrainingMethod

DEFAULT_BETA = 0.1
DEFAULT_SFT_WEIGHT = 1.0
# What a chat template needs of a message; OpenAI's extras (weight, ...) are left out.
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def to_preference_rows(example: dict[str, Any]) -> list[dict[str, Any]]:
    """One OpenAI preference pair -> one TRL conversational preference row."""
    row: dict[str, Any] = {
        "prompt": _messages(example["input"]["messages"]),
        "chosen": _messages(example["preferred_output"]),
        "rejected": _messages(example["non_preferred_output"]),
    }
    tools = example["input"].get("tools")
    if tools:
        row["tools"] = json.dumps(tools)  # one string column, whatever each row's tools look like
    return [row]


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: m[k] for k in _MESSAGE_KEYS if k in m} for m in messages]


def build_trainer(setup: TrainerSetup) -> Any:
    from trl import DPOConfig, DPOTrainer

    options = setup.spec.method_options
    args = DPOConfig(
        **setup.arguments,
        beta=float(options.get("beta", DEFAULT_BETA)),
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, float(options.get("sft_weight", DEFAULT_SFT_WEIGHT))],
        # Lengths were checked against max_length before training; nothing is cut.
        max_length=None,
        # The reference is frozen: its log-probabilities once, not once per epoch.
        precompute_ref_log_probs=True,
    )
    return DPOTrainer(
        model=setup.model,
        args=args,
        train_dataset=_dataset(setup.train_rows),
        eval_dataset=_dataset(setup.valid_rows) if setup.valid_rows else None,
        processing_class=setup.tokenizer,
        peft_config=setup.lora,
        callbacks=setup.callbacks,
    )


def _dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    if any("tools" in row for row in rows):
        rows = [{"tools": None, **row} for row in rows]
    return Dataset.from_list(rows)


def tokens_per_epoch(trainer: Any) -> int:
    """Each pair runs as two sequences: prompt + preferred and prompt + non-preferred."""
    data = trainer.train_dataset
    return int(
        sum(
            2 * len(prompt) + len(chosen) + len(rejected)
            for prompt, chosen, rejected in zip(
                data["prompt_ids"], data["chosen_ids"], data["rejected_ids"], strict=True
            )
        )
    )


DPO = TrainingMethod(
    to_rows=to_preference_rows, build_trainer=build_trainer, tokens_per_epoch=tokens_per_epoch
)
