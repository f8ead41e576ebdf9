"""No process of the gateway's tree outlives it: the death signal through a whole tree,
and the records that let a new gateway stop what a killed one left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from gateway.process_guard import DataRootInUseError, ProcessGuard

# A stand-in gateway: starts an "engine" through the guard; the engine forks a
# grandchild (as vLLM's API server forks its engine core) and both sleep.
STAND_IN_GATEWAY = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gateway.process_guard import ProcessGuard

    ENGINE = (
        "import os, time\\n"
        "from gateway.parent_death import arm_for_this_process_tree\\n"
        "arm_for_this_process_tree()\\n"
        "if os.fork() == 0:\\n"
        "    print('grandchild', os.getpid(), flush=True)\\n"
        "    time.sleep(600)\\n"
        "print('child', os.getpid(), flush=True)\\n"
        "time.sleep(600)\\n"
    )

    async def main():
        guard = ProcessGuard(Path(sys.argv[1]))
        guard.claim()
        await guard.spawn([sys.executable, "-c", ENGINE], stdout=None)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def _start_stand_in(data_root, out) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", STAND_IN_GATEWAY, str(data_root)], stdout=out, stderr=out
    )


def _pids(log, count: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = log.read_text().split()
        pids = [int(lines[i + 1]) for i, w in enumerate(lines) if w in ("child", "grandchild")]
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise TimeoutError(log.read_text())


def test_sigkilled_gateway_takes_its_whole_tree_down(tmp_path):
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        gateway = _start_stand_in(tmp_path / "root", out)
    try:
        tree = [psutil.Process(pid) for pid in _pids(log, 2)]
    finally:
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"outlived the gateway: {alive}"


def test_a_new_gateway_stops_what_a_previous_one_left(tmp_path):
    data_root = tmp_path / "root"
    guard = ProcessGuard(data_root)
    guard.claim()
    # A leftover that ignored the death signal: its own session, tagged as ours.
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env=guard.environment(),
        start_new_session=True,
    )
    # Someone else's process on the same machine: never touched.
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    guard.release()
    try:
        stopped = ProcessGuard(data_root).claim()
        assert leftover.pid in stopped and stranger.pid not in stopped
        assert leftover.poll() is not None  # stopped (and reaped) by the new gateway
        assert stranger.poll() is None
    finally:
        stranger.kill()
        leftover.kill()


def test_a_recorded_group_is_stopped_only_when_its_command_is_ours(tmp_path):
    data_root = tmp_path / "root"
    records = data_root / "run" / "processes"
    records.mkdir(parents=True)
    # An untagged process whose group was recorded (a reused id): its command line is not ours.
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    (records / f"{other.pid}.json").write_text(
        json.dumps({"pgid": other.pid, "argv": ["x"], "started_at": time.time() - 5})
    )
    try:
        assert ProcessGuard(data_root).claim() == []
        assert other.poll() is None
        assert not list(records.glob("*.json"))  # stale records are cleared
    finally:
        other.kill()


def test_one_gateway_per_data_root(tmp_path):
    first = ProcessGuard(tmp_path)
    first.claim()
    with pytest.raises(DataRootInUseError):
        ProcessGuard(tmp_path).claim()
    first.release()
    ProcessGuard(tmp_path).claim()


def test_spawned_processes_carry_the_tag_and_the_expected_parent(tmp_path):
    env = ProcessGuard(tmp_path).environment({"PATH": os.environ["PATH"]})
    assert env["TUNEGATE_EXPECTED_PARENT"] == str(os.getpid())
    assert env["TUNEGATE_PROCESS_TAG"].startswith("tunegate-")
