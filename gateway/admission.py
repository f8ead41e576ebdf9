"""Admission control per engine: a bounded number of requests run, a bounded queue waits.

Past both, a request is refused at once with 429 and Retry-After, rather than
piling up in memory or behind an engine that is already saturated.
"""

from __future__ import annotations

import asyncio

from gateway.errors import RateLimitError


class AdmissionGate:
    def __init__(self, name: str, max_in_flight: int, max_queue: int) -> None:
        self._name = name
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_queue = max_queue
        self._waiting = 0

    async def enter(self) -> None:
        """Take a slot, waiting in the queue if there is room in it; else 429."""
        if self._slots.locked() and self._waiting >= self._max_queue:
            raise RateLimitError(
                f"The {self._name} engine is at capacity; retry shortly.", retry_after_s=1
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1

    def leave(self) -> None:
        self._slots.release()
