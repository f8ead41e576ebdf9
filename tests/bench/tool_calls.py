"""Tool-call accuracy on a held-out set: the base, its tool-call adapter, and the adapter
merged into a q8_0 GGUF, through a real gateway and the openai SDK.

The adapter is fine-tuned on ``tests/data/tool_calls.jsonl`` (OpenAI's function-calling
format) with "auto" hyperparameters; each held-out prompt counts when the answer is one
structured tool call with the expected function and argument values.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.suites import Row
from tests.support.gateway_process import start_gateway
from tests.support.tool_calls import HELD_OUT, MIN_RIGHT, TRAINING_FILE, accuracy, chat_calls

_TERMINAL = {"succeeded", "failed", "cancelled"}


def _measure(data_root: Path) -> dict[str, float]:
    gateway = start_gateway(data_root)
    try:
        gateway.wait_ready(900)
        client = gateway.client()
        scores = {
            "base": accuracy(chat_calls(client, EMBEDDED_MODEL_ID)),
            "base-gguf": accuracy(chat_calls(client, f"{EMBEDDED_MODEL_ID}-gguf")),
        }
        with TRAINING_FILE.open("rb") as data:
            training = client.files.create(file=data, purpose="fine-tune").id
        job = client.fine_tuning.jobs.create(model=EMBEDDED_MODEL_ID, training_file=training)
        while job.status not in _TERMINAL:
            time.sleep(2)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        scores["adapter"] = accuracy(chat_calls(client, job.fine_tuned_model))
        scores["train_s"] = float(job.finished_at - job.created_at)
        with gateway.http() as http:
            merge = http.post(
                f"/v1/adapters/{job.fine_tuned_model}/merge", json={"quantization": "q8_0"}
            ).json()
            while merge["status"] not in ("succeeded", "failed"):
                time.sleep(1)
                merge = http.get(f"/v1/merges/{merge['id']}").json()
        assert merge["status"] == "succeeded", merge
        scores["merged"] = accuracy(chat_calls(client, merge["model"]))
        return scores
    finally:
        gateway.stop()


async def tool_calls(quick: bool) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-tools-") as tmp:
        scores = await asyncio.to_thread(_measure, Path(tmp))
    goal = f"≥ {MIN_RIGHT} of {len(HELD_OUT)}"
    return [
        Row(
            "tool-calls",
            "held-out right, vLLM",
            scores["base"],
            scores["adapter"],
            f"of {len(HELD_OUT)}",
            goal,
            scores["adapter"] >= MIN_RIGHT,
        ),
        Row(
            "tool-calls",
            "held-out right, llama.cpp",
            scores["base-gguf"],
            scores["merged"],
            f"of {len(HELD_OUT)}",
            goal,
            scores["merged"] >= MIN_RIGHT,
        ),
    ]


if __name__ == "__main__":
    for row in asyncio.run(tool_calls(quick=False)):
        print(row.as_dict())
