"""Fine-tuning bases given only as a GGUF, as Ollama and LM Studio keep them: the same
LoRA trained on an f16, a q8_0 and a q4_K_M file of one model, each served on top of
its own GGUF by llama.cpp.

The three files are made here from the embedded model's checkpoint with llama.cpp's
own converter and quantiser, as a downloaded file was made. A gateway with vLLM off
declares each as a GGUF-only base (``--models`` with ``gguf`` and no ``hf_dir``) and
derives their HF checkpoints; one job per base trains on the same data with the same
seed and settings. Each adapter's held-out score is read two ways:

- the job's held-out loss (transformers, on the checkpoint dequantised from that file);
- the share of unseen prompts answered in the trained JSON shape, on llama.cpp.

The baseline of every row is the f16 base.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import openai

from tests.bench.suites import Row
from tests.e2e.test_adapters import is_json_style
from tests.e2e.test_dpo import HELD_OUT
from tests.support.gateway_process import REPO, start_gateway
from tests.support.training import DATA
from tuner.export import QUANTIZATIONS, convert, quantize

SUITE = "gguf-only bases"
CHECKPOINT = REPO / "var" / "models" / "smollm2-135m-instruct"
# Made as merges are: the converter's own types, or llama-quantize afterwards.
FILES = ("f16", "q8_0", "q4_k_m")
HYPERPARAMETERS = {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2}
SEED = 7
FINAL = ("succeeded", "failed", "cancelled")


def _make_files(folder: Path) -> dict[str, Path]:
    made = {}
    for name in FILES:
        outtype, quantized_type = QUANTIZATIONS[name]
        converted = convert(CHECKPOINT, folder / f"{name}-{outtype}.gguf", outtype)
        made[name] = (
            quantize(converted, folder / f"{name}.gguf", quantized_type)
            if quantized_type
            else converted
        )
    return made


def _wait_trainable(http, base: str, timeout_s: float = 900) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        state = http.get(f"/v1/models/{base}").json().get("fine_tuning") or {}
        if state.get("status") == "ready":
            return
        assert state.get("status") == "preparing", state
        time.sleep(2)
    raise TimeoutError(f"{base} did not become trainable")


def _held_out_loss(client: openai.OpenAI, job_id: str) -> float:
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
    last = max(checkpoints, key=lambda c: c.step_number)
    assert last.metrics.valid_loss is not None, last
    return float(last.metrics.valid_loss)


def _json_shaped(client: openai.OpenAI, model: str) -> int:
    shaped = 0
    for question in HELD_OUT:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=24,
            temperature=0,
        )
        shaped += is_json_style(reply.choices[0].message.content or "")
    return shaped


def _measure() -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-gguf-bases-") as tmp:
        files = _make_files(Path(tmp))
        data_root = Path(tmp) / "data"
        data_root.mkdir()
        bases = [{"id": f"smol-{name}", "gguf": str(path)} for name, path in files.items()]
        gateway = start_gateway(
            data_root,
            "--no-vllm-enabled",
            "--no-finetune-after-job-checks",  # not what is measured here
            "--models",
            json.dumps(bases),
        )
        try:
            gateway.wait_ready(300)
            client = gateway.client(timeout=600)
            with gateway.http() as http:
                for name in files:  # derived in the background since the start
                    _wait_trainable(http, f"smol-{name}")
            with (DATA / "json_answers.jsonl").open("rb") as data:
                training = client.files.create(file=data, purpose="fine-tune").id
            with (DATA / "json_answers_valid.jsonl").open("rb") as data:
                validation = client.files.create(file=data, purpose="fine-tune").id
            jobs = {
                name: client.fine_tuning.jobs.create(
                    model=f"smol-{name}",
                    training_file=training,
                    validation_file=validation,
                    hyperparameters=HYPERPARAMETERS,
                    seed=SEED,
                    suffix=name.replace("_", ""),
                ).id
                for name in files
            }
            measured = {}
            for name, job_id in jobs.items():
                job = client.fine_tuning.jobs.retrieve(job_id)
                while job.status not in FINAL:
                    time.sleep(2)
                    job = client.fine_tuning.jobs.retrieve(job_id)
                assert job.status == "succeeded", job.error
                measured[name] = {
                    "size_mb": files[name].stat().st_size / 1e6,
                    "held_out_loss": _held_out_loss(client, job_id),
                    "json_shaped": _json_shaped(client, job.fine_tuned_model),
                }
            return measured
        finally:
            gateway.stop()


async def gguf_bases(quick: bool) -> list[Row]:
    measured = await asyncio.to_thread(_measure)
    print(json.dumps(measured, indent=1))
    f16 = measured["f16"]
    rows = []
    for name in ("q8_0", "q4_k_m"):
        other = measured[name]
        rows += [
            Row(
                SUITE,
                f"held-out loss, f16 → {name}",
                f16["held_out_loss"],
                other["held_out_loss"],
                "nats/token",
                "report",
            ),
            Row(
                SUITE,
                f"unseen in shape, f16 → {name}",
                f16["json_shaped"],
                other["json_shaped"],
                f"of {len(HELD_OUT)}",
                "report",
            ),
            Row(SUITE, f"file MB, f16 → {name}", f16["size_mb"], other["size_mb"], "MB"),
        ]
    return rows


if __name__ == "__main__":
    for row in asyncio.run(gguf_bases(quick=False)):
        print(row.as_dict())
