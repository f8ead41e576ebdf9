"""Short, real LoRA runs on the embedded SmolLM2, for tests that need trained adapters.

They use the tuner's own trainer (``python -m tuner.job``), as fine-tuning jobs do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.gateway_process import REPO

DATA = REPO / "tests" / "data"
BASE_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"
# Enough for a style to stick on 12 examples; about a minute per adapter on 2 cores.
EPOCHS, BATCH_SIZE, LEARNING_RATE = 5, 4, 2e-3


def train_adapters(runs: dict[str, tuple[Path, Path]]) -> dict[str, Path]:
    """Train each (dataset, adapter folder) at once, one thread each; returns the folders."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    processes = {}
    for name, (data, out) in runs.items():
        run_dir = out.with_name(f"{out.name}-run")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data, run_dir / "train.jsonl")
        (run_dir / "job.json").write_text(
            json.dumps(
                {
                    "base_dir": str(BASE_DIR),
                    "n_epochs": EPOCHS,
                    "batch_size": BATCH_SIZE,
                    "learning_rate": LEARNING_RATE,
                    "seed": 0,
                    "max_length": 2048,
                    "lora": {"rank": 8, "alpha": 16, "target_modules": "all-linear"},
                }
            )
        )
        processes[name] = (
            run_dir,
            out,
            subprocess.Popen(
                [sys.executable, "-m", "tuner.job", str(run_dir)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            ),
        )
    for name, (run_dir, out, process) in processes.items():
        output, _ = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise RuntimeError(
                f"training {name} failed:\n{output.decode(errors='replace')[-3000:]}"
            )
        shutil.copytree(run_dir / "adapter", out)
    return {name: out for name, (_, out) in runs.items()}
