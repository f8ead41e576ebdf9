"""LoRA supervised fine-tuning with PEFT + TRL: one run, from a chat dataset to an adapter.

The dataset is chat examples (``{"messages": [...]}``). Each becomes a
prompt/completion pair whose completion is the last assistant message, so the
loss covers assistant tokens only. The adapter is saved as safetensors.

    python -m tuner.sft --base HF_DIR --data train.jsonl --out ADAPTER_DIR [--epochs 8 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TARGET_MODULES = "all-linear"


@dataclass(frozen=True)
class LoraOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = DEFAULT_TARGET_MODULES


@dataclass(frozen=True)
class TrainConfig:
    base_dir: Path
    train_file: Path
    out_dir: Path
    epochs: int = 3
    batch_size: int = 4
    learning_rate: float = 1e-3
    seed: int = 0
    max_length: int = 1024
    lora: LoraOptions = field(default_factory=LoraOptions)


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float
    trained_tokens: int


def read_chat_examples(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def to_prompt_completion(example: dict[str, Any]) -> dict[str, Any]:
    """Split at the last assistant message: it is what the model learns to write."""
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"prompt": messages[:last], "completion": [messages[last]]}


def to_training_rows(example: dict[str, Any]) -> list[dict[str, Any]]:
    """One prompt/completion pair per assistant message, so that the loss covers every
    assistant turn (each with the conversation before it) and nothing else. A message
    with ``"weight": 0`` is context only, as in OpenAI's format."""
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in example["messages"]]
    return [
        {"prompt": messages[:i], "completion": [messages[i]]}
        for i, original in enumerate(example["messages"])
        if original.get("role") == "assistant" and original.get("weight", 1) != 0
    ]


def train_lora(config: TrainConfig) -> TrainResult:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base_dir)
    model = AutoModelForCausalLM.from_pretrained(config.base_dir, dtype=torch.float32)
    rows = [row for e in read_chat_examples(config.train_file) for row in to_training_rows(e)]
    dataset = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=str(config.out_dir / "trainer"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        max_length=config.max_length,
        use_cpu=not torch.cuda.is_available(),
        completion_only_loss=True,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
    )
    output = trainer.train()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(config.out_dir, safe_serialization=True)
    tokens = int(sum(len(ids) for ids in trainer.train_dataset["input_ids"])) * config.epochs
    return TrainResult(config.out_dir, output.global_step, float(output.training_loss), tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train_lora(
        TrainConfig(
            base_dir=args.base,
            train_file=args.data,
            out_dir=args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            lora=LoraOptions(rank=args.rank, alpha=2 * args.rank),
        )
    )
    print(json.dumps({k: str(v) for k, v in asdict(result).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
