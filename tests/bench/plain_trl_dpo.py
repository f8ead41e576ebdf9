"""The reference for the DPO benchmark: a plain TRL DPOTrainer script, TRL's defaults otherwise.

    python -m tests.bench.plain_trl_dpo BASE_DIR PAIRS_JSONL EPOCHS BATCH_SIZE LEARNING_RATE BETA

Same model, data, LoRA, loss (DPO + the supervised term), schedule and seed
as the tuner's DPO jobs. Prints one JSON line: seconds (building the trainer,
which tokenizes the pairs, and training), per-step losses.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    base, data, epochs, batch, lr, beta = sys.argv[1:7]
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tuner.dpo import to_preference_rows
    from tuner.job import precision_arguments

    torch.manual_seed(0)
    lines = Path(data).read_text().splitlines()
    rows = [row for line in lines for row in to_preference_rows(json.loads(line))]
    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    started = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(
            output_dir="/tmp/plain-trl-dpo",
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
            **precision_arguments(torch),  # as the tuner runs: fp32 where bf16 is emulated
            beta=float(beta),
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, 1.0],
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        callbacks=[Losses()],
    )
    trainer.train()
    print(json.dumps({"seconds": time.perf_counter() - started, "losses": losses}))


if __name__ == "__main__":
    main()
