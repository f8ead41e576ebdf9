"""Training at scale, side by side in one run.

- Trainer slots: two small jobs on two slots (one core each) against the same two jobs
  one after the other on the default slot (the whole machine each): wall time to both
  done, through the gateway and the SDK.
- Several processes: one job as two processes of one core each (DDP over gloo) against
  one process with both cores, and against one process on one core: trained tokens/s
  from the trainer's own clock, and the final training loss (the runs should learn alike).

A shared machine skews the one-process, two-thread run most: its two compute threads
meet at a barrier in every operation, so another program on either core stalls both.

On 2 CPU cores neither is expected to be faster: the cores are the limit, and two
processes add a gradient all-reduce each step. What is measured is that the overhead
stays small. On GPUs, a slot per device trains that many jobs at once, and DDP over N
devices divides the time per epoch by close to N.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.suites import Row, _varied_dataset, fake_upstream, write_job_spec
from tests.support.gateway_process import REPO, start_gateway

DATA = REPO / "tests" / "data" / "json_answers.jsonl"


async def training(quick: bool) -> list[Row]:
    return [*await _slots(quick), *await _processes(quick)]


async def _slots(quick: bool) -> list[Row]:
    epochs = 1 if quick else 2
    one_slot = await asyncio.to_thread(_two_jobs_wall_s, [], epochs)
    two_slots = await asyncio.to_thread(
        _two_jobs_wall_s, ["--tuner-slots", json.dumps([[1], [1]])], epochs
    )
    return [
        Row(
            "training",
            "wall s, 2 jobs 1→2 slots",
            one_slot,
            two_slots,
            "s",
            "< 1× on 2 cores: no goal",
            None,
        )
    ]


def _two_jobs_wall_s(flags: list[str], epochs: int) -> float:
    """Seconds from creating two jobs to both succeeded, on a gateway with ``flags``."""
    # Registration needs a vLLM base: an instant stand-in takes its part.
    with fake_upstream() as upstream, tempfile.TemporaryDirectory(prefix="bench-slots-") as tmp:
        gateway = start_gateway(Path(tmp), "--vllm-url", upstream, "--no-llamacpp-enabled", *flags)
        try:
            gateway.wait_ready(120)
            client = gateway.client(timeout=600)
            with DATA.open("rb") as data:
                file_id = client.files.create(file=data, purpose="fine-tune").id
            started = time.monotonic()
            jobs = [
                client.fine_tuning.jobs.create(
                    model=EMBEDDED_MODEL_ID,
                    training_file=file_id,
                    hyperparameters={"n_epochs": epochs, "batch_size": 4},
                ).id
                for _ in range(2)
            ]
            while True:
                statuses = [client.fine_tuning.jobs.retrieve(j).status for j in jobs]
                if all(s in ("succeeded", "failed", "cancelled") for s in statuses):
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            if statuses != ["succeeded", "succeeded"]:
                raise RuntimeError(f"benchmark jobs ended {statuses}")
            return elapsed
        finally:
            gateway.stop()


async def _processes(quick: bool) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        data = Path(tmp) / "train.jsonl"
        _varied_dataset(data, 32 if quick else 64)
        one = await _train(Path(tmp) / "one", data, processes=1, cpus="")
        one_core = await _train(Path(tmp) / "one-core", data, processes=1, cpus="0")
        two = await _train(Path(tmp) / "two", data, processes=2, cpus="0;1")
    rate_one, rate_one_core, rate_two = (
        run["trained_tokens"] / run["train_seconds"] for run in (one, one_core, two)
    )
    return [
        Row(
            "training",
            "trained tok/s 1→2 procs",
            rate_one,
            rate_two,
            "tok/s",
            "≥ 0.7×; no speed-up on 2 cores",
            rate_two / rate_one >= 0.7,
        ),
        # The same two ranks against one rank on one of their cores: DDP's scaling (ideal 2×).
        Row(
            "training",
            "trained tok/s 1 core→2 ranks",
            rate_one_core,
            rate_two,
            "tok/s",
            "",
            None,
        ),
        Row(
            "training",
            "final loss 1→2 procs",
            one["train_loss"],
            two["train_loss"],
            "loss",
            "within 10%",
            abs(two["train_loss"] / one["train_loss"] - 1) <= 0.10,
        ),
    ]


async def _train(run_dir: Path, data: Path, processes: int, cpus: str) -> dict:
    """One trainer run, as a one-process slot or a slot of ``processes`` ranks."""
    run_dir.mkdir()
    (run_dir / "train.jsonl").write_bytes(data.read_bytes())
    write_job_spec(run_dir, epochs=1, batch=8, lr=1e-3)
    launcher = (
        ["-m", "tuner.job"]
        if processes == 1
        else ["-m", "tuner.launch", "--processes", str(processes)]
    )
    env = {**os.environ, "TUNEGATE_RANK_CPUS": cpus, "TOKENIZERS_PARALLELISM": "false"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *launcher,
        str(run_dir),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    result = next((e for e in events if e["type"] == "result"), None)
    if process.returncode != 0 or result is None:
        raise RuntimeError(f"the {processes}-process run failed ({process.returncode})")
    return result
