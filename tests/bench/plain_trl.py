"""The reference for the tuner benchmark: a plain TRL SFTTrainer script, defaults throughout.

    python -m tests.bench.plain_trl BASE_DIR TRAIN_JSONL EPOCHS BATCH_SIZE LEARNING_RATE

Prints one JSON line: train seconds, per-step losses.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    base, data, epochs, batch, lr = sys.argv[1:6]
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuner.examples import to_training_rows

    torch.manual_seed(0)
    lines = Path(data).read_text().splitlines()
    rows = [row for line in lines for row in to_training_rows(json.loads(line))]
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        args=SFTConfig(
            output_dir="/tmp/plain-trl",
            num_train_epochs=int(epochs),
            per_device_train_batch_size=int(batch),
            learning_rate=float(lr),
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=min(5, max(1, len(rows) // int(batch))),
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=0,
            data_seed=0,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(base),
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        callbacks=[Losses()],
    )
    started = time.perf_counter()
    trainer.train()
    print(json.dumps({"seconds": time.perf_counter() - started, "losses": losses}))


if __name__ == "__main__":
    main()
