"""No process the gateway starts outlives it, whatever kills the gateway.

Two guards, because either alone has a gap:

1. **The parent-death signal** (Linux ``PR_SET_PDEATHSIG``). Every process the
   gateway starts gets it before ``exec``; processes those start in turn
   (vLLM's ``EngineCore``, torchrun's ranks) set it for themselves when they
   start (see ``gateway/engines/vllm_site/sitecustomize.py`` and
   ``set_parent_death_signal``). A SIGKILLed gateway thus takes its whole tree
   down within moments. The gap: the signal is only as good as every process
   remembering to set it, and a process forked at the wrong instant can miss it.
2. **A record of each process group under the data root**
   (``<data root>/run/processes/<pgid>.json``), plus a tag in each started
   process's environment, which its children inherit. When a gateway starts,
   it stops whatever a previous life on the same data root left running:
   every process whose environment carries this data root's tag, and every
   process of a recorded group whose command line is one of ours. A reused
   pid is never hit, because a process must prove it is ours first.

A lock on the data root makes sure that only one gateway uses it at a time, so
the second guard never stops a live gateway's processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import IO, Any

import psutil

from gateway.parent_death import PARENT_VARIABLE, set_parent_death_signal

log = logging.getLogger(__name__)

TAG_VARIABLE = "TUNEGATE_PROCESS_TAG"
# Words in the command lines of the processes the gateway starts: a recorded
# group's process is stopped only when its command line has one of them.
OUR_COMMANDS = (
    "vllm",
    "VLLM::",
    "llama-server",
    "llama-quantize",
    "llama_cpp",
    "tuner.",
    "torchrun",
    "torch.distributed",
    "accelerate",
    "multiprocessing",
)


class DataRootInUseError(RuntimeError):
    """Another live gateway holds this data root."""


class ProcessGuard:
    """Starts the gateway's child processes and stops what a previous life left."""

    def __init__(self, data_root: Path) -> None:
        self._records = data_root / "run" / "processes"
        self._lock_path = data_root / "run" / "gateway.lock"
        self.tag = "tunegate-" + hashlib.sha256(str(data_root.resolve()).encode()).hexdigest()[:16]
        self._lock_file: IO[str] | None = None

    # --- the data root --------------------------------------------------------
    def claim(self) -> list[int]:
        """Lock the data root, then stop every process a previous gateway left on it.

        Returns the pids stopped."""
        self._records.mkdir(parents=True, exist_ok=True)
        lock_file = self._lock_path.open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise DataRootInUseError(
                f"Another gateway is running on the data root {self._lock_path.parent.parent}."
            ) from None
        self._lock_file = lock_file
        return self.stop_leftovers()

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def stop_leftovers(self) -> list[int]:
        leftovers = self._leftovers()
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                log.warning(
                    "stopping process %s left by a previous gateway: %s",
                    process.pid,
                    " ".join(process.cmdline())[:200],
                )
                process.kill()
        psutil.wait_procs(leftovers, timeout=10)
        for record in self._records.glob("*.json"):
            record.unlink(missing_ok=True)
        return [p.pid for p in leftovers]

    # --- starting processes ---------------------------------------------------
    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """``env`` (default: the gateway's) plus the tag that marks a process as ours."""
        return {
            **(os.environ if env is None else env),
            TAG_VARIABLE: self.tag,
            PARENT_VARIABLE: str(os.getpid()),
        }

    async def spawn(
        self, argv: list[str], *, env: dict[str, str] | None = None, **options: Any
    ) -> asyncio.subprocess.Process:
        """``asyncio.create_subprocess_exec`` in a new session, with the death signal
        and a record of its process group."""
        gateway_pid = os.getpid()
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=self.environment(env),
            start_new_session=True,
            preexec_fn=lambda: set_parent_death_signal(gateway_pid),
            **options,
        )
        self._record(process.pid, argv)
        return process

    def forget(self, pgid: int) -> None:
        """The group ended (or was stopped) normally: drop its record."""
        (self._records / f"{pgid}.json").unlink(missing_ok=True)

    def _record(self, pgid: int, argv: list[str]) -> None:
        record = {"pgid": pgid, "argv": argv, "started_at": time.time()}
        self._records.mkdir(parents=True, exist_ok=True)
        path = self._records / f"{pgid}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    # --- finding what is ours -------------------------------------------------
    def _leftovers(self) -> list[psutil.Process]:
        recorded = self._recorded_groups()
        me = os.getpid()
        found = []
        for process in psutil.process_iter():
            if process.pid == me:
                continue
            with contextlib.suppress(psutil.Error):
                if self._is_tagged(process) or self._in_recorded_group(process, recorded):
                    found.append(process)
        return found

    def _recorded_groups(self) -> dict[int, float]:
        groups: dict[int, float] = {}
        for path in self._records.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                record = json.loads(path.read_text())
                groups[int(record["pgid"])] = float(record["started_at"])
        return groups

    def _is_tagged(self, process: psutil.Process) -> bool:
        try:
            return process.environ().get(TAG_VARIABLE) == self.tag
        except psutil.AccessDenied:
            return False

    @staticmethod
    def _in_recorded_group(process: psutil.Process, recorded: dict[int, float]) -> bool:
        started = recorded.get(os.getpgid(process.pid))
        if started is None or process.create_time() < started - 1:
            return False  # not that group, or older than the record: a reused id
        command = " ".join(process.cmdline())
        return any(word in command for word in OUR_COMMANDS)
