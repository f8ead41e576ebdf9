"""Notices when the gateway's event loop stops turning.

Every request, stream and trainer event of one gateway runs on one event loop.
Work that holds it (a blocking call in a coroutine, a starved process) delays
every answer at once, and a loop that resumes after more than the keep-alive
timeout runs its timers before its reads, so it closes idle client connections
that already hold a request. This watcher makes such a stall visible: a warning
in the log and the longest stall on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# Once a second: each wake-up of an idle gateway costs CPU the engines could use.
TICK_S = 1.0
# Below this, lateness is ordinary scheduling noise on a busy machine.
STALL_S = 1.0


class LoopWatch:
    def __init__(
        self, on_stall: Callable[[float], None], stall_s: float = STALL_S, tick_s: float = TICK_S
    ) -> None:
        self._on_stall = on_stall
        self._stall_s = stall_s
        self._tick_s = tick_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self._tick_s)
            late = time.monotonic() - before - self._tick_s
            if late >= self._stall_s:
                log.warning("the event loop was held for %.1f s: every request waited", late)
                self._on_stall(late)
