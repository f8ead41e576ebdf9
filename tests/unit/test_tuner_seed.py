"""A job's seed: the same seed and data give the same adapter, bit for bit, on CPU."""

from __future__ import annotations

import io
import json

from tests.unit.test_tuner_job import tiny_base, write_run_dir  # noqa: F401 (a fixture)
from tuner.job import EventSink, JobSpec, run


def train(folder, base, seed: int) -> bytes:
    write_run_dir(folder, base, valid=False)
    job_file = folder / "job.json"
    # Short: one epoch of two steps is enough to show the seed's reach.
    job_file.write_text(
        json.dumps({**json.loads(job_file.read_text()), "seed": seed, "n_epochs": 1})
    )
    spec = JobSpec.from_run_dir(folder)
    run(spec, EventSink(io.StringIO()))
    return (spec.adapter_dir / "adapter_model.safetensors").read_bytes()


def test_one_seed_gives_the_same_adapter_bytes_and_another_seed_does_not(tiny_base, tmp_path):  # noqa: F811
    first = train(tmp_path / "a", tiny_base, seed=7)
    again = train(tmp_path / "b", tiny_base, seed=7)
    other = train(tmp_path / "c", tiny_base, seed=8)
    assert first == again
    assert first != other  # the seed reaches the LoRA's initial weights and the data order
