"""One trainer subprocess (``python -m tuner.job RUN_DIR``) and the events it prints.

The trainer is started by the gateway's ``ProcessGuard``, like the engines: in
its own process group with a parent-death signal, recorded under the data
root, so cancelling stops all of it and a killed gateway leaves no trainer
behind.
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
from pathlib import Path
from typing import Any

from gateway.engines.process import signal_group
from gateway.process_guard import ProcessGuard

log = logging.getLogger(__name__)


class TrainerProcess:
    def __init__(self, run_dir: Path, guard: ProcessGuard) -> None:
        self.run_dir = run_dir
        self._guard = guard
        self.log_path = run_dir / "trainer.log"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with self.log_path.open("ab") as log_file:
            self._process = await self._guard.spawn(
                [sys.executable, "-m", "tuner.job", str(self.run_dir)],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
                limit=1024 * 1024,
            )

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

    async def terminate(self, grace_s: float = 5.0) -> None:
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
