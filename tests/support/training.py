"""Short, real LoRA runs on the embedded SmolLM2, for tests that need trained adapters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.gateway_process import REPO

DATA = REPO / "tests" / "data"
BASE_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"
# Enough for a style to stick on 12 examples; about a minute per adapter on 2 cores.
EPOCHS, BATCH_SIZE, LEARNING_RATE = 5, 4, 2e-3


def train_adapters(runs: dict[str, tuple[Path, Path]]) -> dict[str, Path]:
    """Train each (dataset, output folder) at once, one thread each; returns the folders."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    processes = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tuner.sft",
                "--base",
                str(BASE_DIR),
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                str(EPOCHS),
                "--batch-size",
                str(BATCH_SIZE),
                "--learning-rate",
                str(LEARNING_RATE),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, (data, out) in runs.items()
    }
    for name, process in processes.items():
        output, _ = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise RuntimeError(
                f"training {name} failed:\n{output.decode(errors='replace')[-3000:]}"
            )
    return {name: out for name, (_, out) in runs.items()}
