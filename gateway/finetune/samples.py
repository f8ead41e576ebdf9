"""Samples of a finished job: a few held-out prompts through the base and the new adapter.

Each becomes an event of the job, side by side with the expected answer, so
that a user sees what training changed. A sample that cannot be answered is
shown as ``None``; it never fails the job.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.errors import TunegateError
from gateway.finetune.jobs_store import JobStore
from gateway.finetune.methods import job_method
from gateway.forwarding import Forwarder
from gateway.protocol import ChatCompletionRequest

SAMPLE_COUNT = 3


class SampleRecorder:
    def __init__(self, store: JobStore, forwarder: Forwarder, runs_dir: Path) -> None:
        self._store = store
        self._forwarder = forwarder
        self._runs_dir = runs_dir

    async def record(self, job_id: str, model_id: str, valid_loss: float | None) -> None:
        run_dir = self._runs_dir / job_id
        source = (
            run_dir / "valid.jsonl"
            if (run_dir / "valid.jsonl").is_file()
            else run_dir / "train.jsonl"
        )
        held_out = source.name == "valid.jsonl"
        examples = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        job = self._store.get(job_id)
        sample = job_method(job["method"]["type"]).sample
        # "base" is what the job started from: the base model, or the adapter it continued.
        base = job["model"]
        cases = [sample(example) for example in examples[:SAMPLE_COUNT]]
        # All at once: the engine batches them (one after another took ~30 s on 2 CPU cores).
        replies = iter(
            await asyncio.gather(
                *(self.complete(model, prompt) for prompt, _ in cases for model in (base, model_id))
            )
        )
        for number, (prompt, expected) in enumerate(cases, start=1):
            answers = {"base": next(replies), "fine_tuned": next(replies)}
            self._store.add_event(
                job_id,
                f"{'Held-out' if held_out else 'Training'} sample {number}: "
                f"base said {answers['base']!r}; fine-tuned said {answers['fine_tuned']!r}",
                data={
                    "held_out": held_out,
                    "prompt": prompt,
                    "expected": expected,
                    "base_answer": answers["base"],
                    "fine_tuned_answer": answers["fine_tuned"],
                    "valid_loss": valid_loss,
                },
            )

    async def complete(self, model: str, messages: list[dict[str, Any]]) -> str | None:
        body = {"model": model, "messages": messages, "max_tokens": 64, "temperature": 0}
        raw = json.dumps(body).encode()
        try:
            reply = await self._forwarder.forward(
                "/v1/chat/completions", ChatCompletionRequest.model_validate(body), raw
            )
            return json.loads(reply.body)["choices"][0]["message"]["content"]
        except (TunegateError, ValueError, KeyError, IndexError):
            return None
