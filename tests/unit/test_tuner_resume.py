"""Pause, resume and several processes, on the tiny random Llama of ``test_tuner_job``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gateway.parent_death import PARENT_VARIABLE
from tests.support.gateway_process import REPO, processes_with
from tests.unit.test_tuner_job import events_of, tiny_base, write_run_dir  # noqa: F401
from tuner.checkpointing import SEAL_FILE, latest_resumable, seal
from tuner.job import EventSink, run

MULTI_CPU_CONFIG = REPO / "docs" / "accelerate" / "multi-cpu.yaml"  # the documented example


def test_a_paused_run_resumes_to_exactly_the_adapter_of_an_unbroken_run(
    tiny_base,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    import safetensors.torch
    import torch

    unbroken = write_run_dir(tmp_path / "unbroken", tiny_base, valid=True)
    run(unbroken, EventSink(io.StringIO()))

    spec = write_run_dir(tmp_path / "paused", tiny_base, valid=True)
    spec.pause_file.touch()  # seen after the first step
    first = io.StringIO()
    run(spec, EventSink(first))
    events = events_of(first)
    assert events[-1] == {"type": "paused", "step": 1}
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [1]
    assert not spec.adapter_dir.exists()

    loads: list[tuple[str, object]] = []
    real_load = torch.load

    def recording_load(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append((str(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    spec.pause_file.unlink()
    second = io.StringIO()
    run(spec, EventSink(second))
    events = events_of(second)
    assert events[0] == {"type": "resumed", "step": 1}
    assert [e["step"] for e in events if e["type"] == "progress"] == [2, 3, 4]
    assert events[-1]["type"] == "result" and events[-1]["steps"] == 4

    # Optimizer, scheduler and RNG state came back, each through a weights-only load,
    # from the checkpoint the run had sealed.
    loaded = {Path(name).name for name, _ in loads}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= loaded
    assert all(weights_only is True for _, weights_only in loads)
    assert all(Path(name).parent == spec.checkpoints_dir / "checkpoint-1" for name, _ in loads)
    resumed = safetensors.torch.load_file(spec.adapter_dir / "adapter_model.safetensors")
    expected = safetensors.torch.load_file(unbroken.adapter_dir / "adapter_model.safetensors")
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)
    assert sorted(p.name for p in spec.servable_dir.iterdir()) == [
        "ckpt-step-1",
        "ckpt-step-2",
        "ckpt-step-4",
    ]


def test_only_sealed_unchanged_checkpoints_of_the_job_are_resumed(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"

    def checkpoint(step: int, sealed: bool = True) -> Path:
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "optimizer.pt").write_bytes(b"state %d" % step)
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        if sealed:
            seal(folder, step)
        return folder

    checkpoint(2)
    (checkpoint(4) / "optimizer.pt").write_bytes(b"changed after the seal")
    checkpoint(6, sealed=False)  # a save cut short
    (checkpoint(8) / "pytorch_model.bin").write_bytes(b"put there later")
    elsewhere = tmp_path / "elsewhere" / "checkpoint-10"
    elsewhere.parent.mkdir()
    checkpoint(10).rename(elsewhere)
    (checkpoints / "checkpoint-10").symlink_to(elsewhere, target_is_directory=True)
    renamed = checkpoint(12)
    json.loads((renamed / SEAL_FILE).read_text())
    (renamed / SEAL_FILE).write_text(json.dumps({"step": 14, "files": {}}))

    chosen, notes = latest_resumable(checkpoints)
    assert chosen == checkpoints / "checkpoint-2"
    assert [n.split(":")[0] for n in notes] == [
        f"The checkpoint at step {step} was not used" for step in (12, 10, 8, 6, 4)
    ]
    assert "changed after it was sealed" in notes[-1] and "not sealed" in notes[-2]
    assert "not a folder of its own" in notes[1]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]
    assert elsewhere.is_dir()  # a link is dropped, never followed
    assert latest_resumable(tmp_path / "nothing") == (None, [])


def launch(run_dir: Path, processes: int, *flags: str) -> subprocess.Popen[str]:
    env = {**os.environ, PARENT_VARIABLE: str(os.getpid()), "TUNEGATE_RANK_CPUS": "0;1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tuner.launch", "--processes", str(processes), *flags, str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_two_processes_train_one_job_and_only_rank_0_speaks(tiny_base, tmp_path):  # noqa: F811
    spec = write_run_dir(tmp_path / "run", tiny_base, valid=True)
    spec.pause_file.touch()
    paused = launch(spec.run_dir, 2, "--accelerate-config", str(MULTI_CPU_CONFIG))
    output, _ = paused.communicate(timeout=300)
    assert paused.returncode == 0
    events = [json.loads(line) for line in output.splitlines()]
    assert [e["type"] for e in events] == ["progress", "checkpoint", "paused"]

    spec.pause_file.unlink()
    resumed = launch(spec.run_dir, 2, "--accelerate-config", str(MULTI_CPU_CONFIG))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0
    events = [json.loads(line) for line in output.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "resumed" and kinds.count("result") == 1
    # Global batch 4 over two ranks of 2: 8 examples make 2 steps an epoch, as in one process.
    assert [e["step"] for e in events if e["type"] == "progress"] == [2, 3, 4]
    assert (spec.adapter_dir / "adapter_model.safetensors").is_file()


def test_every_rank_dies_with_its_launcher(tiny_base, tmp_path):  # noqa: F811
    spec = write_run_dir(tmp_path / "run", tiny_base, valid=False)
    job = json.loads((spec.run_dir / "job.json").read_text())
    (spec.run_dir / "job.json").write_text(json.dumps({**job, "n_epochs": 500}))
    launcher = launch(spec.run_dir, 2)
    try:
        deadline = time.monotonic() + 120
        ranks: list[psutil.Process] = []
        while len(ranks) < 2:
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.2)
            found = processes_with("tuner.job", str(spec.run_dir))
            ranks = [p for p in found if p.pid != launcher.pid]
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    _, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive, f"ranks outlived their launcher: {alive}"


@pytest.mark.parametrize("module", ["tuner.launch", "tuner.job"])
def test_a_trainer_whose_parent_is_already_gone_exits_at_once(module, tmp_path):
    started = time.monotonic()
    orphan = subprocess.run(
        [sys.executable, "-m", module, "--processes", "2", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, PARENT_VARIABLE: "1"},  # not its parent: that one has died
        capture_output=True,
        timeout=120,
    )
    assert orphan.returncode == 1 and not orphan.stdout
    assert time.monotonic() - started < 30  # before any training work


@pytest.mark.parametrize("rank_cpus", ["0;1", ""])
def test_rank_cpus(rank_cpus):
    from tuner.distributed import Rank, cpus_of

    expected = {0} if rank_cpus else None
    assert cpus_of(Rank(rank=0, local_rank=0, world_size=2), rank_cpus) == expected
