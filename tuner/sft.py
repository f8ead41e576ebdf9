"""The supervised method: TRL's SFTTrainer on prompt/completion rows, loss on the answers only."""

from __future__ import annotations

from typing import Any

from tuner.examples import to_training_rows
from tuner.methods import TrainerSetup, TrainingMethod


def build_trainer(setup: TrainerSetup) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **setup.arguments,
        # Lengths were checked against max_length before training; padding-free
        # batches do not truncate (TRL asks for None to say so).
        max_length=None,
        completion_only_loss=True,  # loss on the assistant's answer only
        # No padding: a batch is its examples' tokens end to end, kept apart by position_ids
        # (transformers builds a block-diagonal mask for them), so no compute goes to pad tokens.
        padding_free=True,
    )
    return SFTTrainer(
        model=setup.model,
        args=args,
        train_dataset=Dataset.from_list(setup.train_rows),
        eval_dataset=Dataset.from_list(setup.valid_rows) if setup.valid_rows else None,
        processing_class=setup.tokenizer,
        peft_config=setup.lora,
        callbacks=setup.callbacks,
    )


def tokens_per_epoch(trainer: Any) -> int:
    return int(sum(len(ids) for ids in trainer.train_dataset["input_ids"]))


SUPERVISED = TrainingMethod(
    to_rows=to_training_rows, build_trainer=build_trainer, tokens_per_epoch=tokens_per_epoch
)
