"""One trainer run in a slot, and the events it prints.

A slot of one process runs ``python -m tuner.job RUN_DIR``; a slot of several
runs ``python -m tuner.launch`` (torchrun, or ``accelerate launch`` with the
configured file), which starts ``tuner.job`` once per device. Either way the
gateway starts exactly one process, in ``spawn_trainer``, through the
``ProcessGuard`` like the engines: in a session of its own, with a
parent-death signal, recorded under the data root. Every process below it
sets its own parent-death signal at start (``gateway.parent_death``): torchrun
starts each rank in a session of its own, so no signal to the group reaches
them.

Stopping is SIGTERM to the group (torchrun passes it on to its ranks), then
SIGKILL; the ranks die with their launcher. Pausing is a file the trainer
checks after each step (``tuner.pause``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.engines.process import signal_group
from gateway.finetune.slots import TrainerSlot
from gateway.process_guard import ProcessGuard
from tuner.pause import PAUSE_FILE

log = logging.getLogger(__name__)

TRAINER_MODULE = "tuner.job"


@dataclass(frozen=True)
class TrainerCommand:
    argv: list[str]
    env: dict[str, str]


def trainer_command(
    run_dir: Path,
    slot: TrainerSlot,
    accelerate_config: Path | None = None,
    module: str = TRAINER_MODULE,
) -> TrainerCommand:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **slot.env(),
    }
    if slot.processes == 1:
        argv = [sys.executable, "-m", module, str(run_dir)]
    else:
        argv = [sys.executable, "-m", "tuner.launch", "--processes", str(slot.processes)]
        if accelerate_config is not None:
            argv += ["--accelerate-config", str(accelerate_config)]
        argv.append(str(run_dir))
    return TrainerCommand(argv, env)


async def spawn_trainer(
    command: TrainerCommand, log_path: Path, guard: ProcessGuard
) -> asyncio.subprocess.Process:
    """The one place where the gateway starts a trainer (one process, whatever the slot)."""
    with log_path.open("ab") as log_file:
        return await guard.spawn(
            command.argv,
            env=command.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            limit=1024 * 1024,
        )


class TrainerProcess:
    def __init__(self, run_dir: Path, command: TrainerCommand, guard: ProcessGuard) -> None:
        self.run_dir = run_dir
        self.command = command
        self._guard = guard
        self.log_path = run_dir / "trainer.log"
        self._process: asyncio.subprocess.Process | None = None
        self._stop_asked = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self) -> None:
        self._process = await spawn_trainer(self.command, self.log_path, self._guard)
        if self._stop_asked:  # a cancel came while the process was being started
            await self.terminate()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                log.debug("trainer printed a non-event line: %r", line[:200])
                continue
            if isinstance(event, dict) and "type" in event:
                yield event

    async def wait(self) -> int:
        assert self._process is not None
        returncode = await self._process.wait()
        self._guard.forget(self._process.pid)
        return returncode

    def request_pause(self) -> None:
        request_pause(self.run_dir)

    async def terminate(self, grace_s: float = 5.0) -> None:
        """Stop the trainer; asked before its process exists, ``start`` stops it once it
        does (else a job cancelled as it starts would train to its end, unseen)."""
        self._stop_asked = True
        if self._process is None or self._process.returncode is not None:
            return
        pgid = self._process.pid
        signal_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), grace_s)
        except TimeoutError:
            pass
        signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await self._process.wait()


def request_pause(run_dir: Path) -> None:
    (run_dir / PAUSE_FILE).touch()


def clear_pause(run_dir: Path) -> None:
    (run_dir / PAUSE_FILE).unlink(missing_ok=True)
