"""The supervised method: TRL's SFTTrainer on prompt/completion rows, loss on the answers only.

The rows are rendered and tokenized here, by the base's ``TrainingChat``: the
template the gateway's file checks rendered them with (tunegate's tool
template for a ChatML base that cannot express tools), so tools, tool calls
and tool messages render as the checks saw them and as the server will parse
them. TRL then takes ``input_ids`` and ``completion_mask`` as they are.
"""

from __future__ import annotations

from typing import Any

from tuner.chat_templates import chat_for_training
from tuner.examples import to_training_rows
from tuner.methods import TrainerSetup, TrainingMethod


def tokenized_rows(rows: list[dict[str, Any]], chat: Any) -> list[dict[str, list[int]]]:
    return [chat.tokenize_row(row) for row in rows]


def build_trainer(setup: TrainerSetup) -> Any:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    chat = chat_for_training(setup.spec.base_dir, setup.tokenizer)
    if chat is None:
        raise ValueError(f"the base at {setup.spec.base_dir} has no chat template")
    setup.tokenizer.chat_template = chat.choice.template
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
    valid = tokenized_rows(setup.valid_rows, chat)
    return SFTTrainer(
        model=setup.model,
        args=args,
        train_dataset=Dataset.from_list(tokenized_rows(setup.train_rows, chat)),
        eval_dataset=Dataset.from_list(valid) if valid else None,
        processing_class=setup.tokenizer,
        peft_config=setup.lora,
        callbacks=setup.callbacks,
    )


def tokens_per_epoch(trainer: Any) -> int:
    return int(sum(len(ids) for ids in trainer.train_dataset["input_ids"]))


SUPERVISED = TrainingMethod(
    to_rows=to_training_rows, build_trainer=build_trainer, tokens_per_epoch=tokens_per_epoch
)
