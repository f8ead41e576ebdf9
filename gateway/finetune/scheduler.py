"""One queue of fine-tuning jobs in front of the trainer slots.

Jobs are taken first come, first served; each takes the first free slot and
holds it until its trainer has stopped. A job that has to wait is told its
place in the queue, and told again each time it moves up. The scheduler knows
nothing of training: it runs ``run(job_id, slot)`` and frees the slot when that
returns; a run that returns True (an interrupted job that will resume) goes
back to the head of the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.finetune.slots import TrainerSlot

log = logging.getLogger(__name__)

RunJob = Callable[[str, TrainerSlot], Awaitable[bool]]
# (job id, place in the queue from 1, slots busy)
TellPlace = Callable[[str, int, int], None]


class SlotScheduler:
    def __init__(self, slots: list[TrainerSlot], run: RunJob, tell_place: TellPlace) -> None:
        self.slots = list(slots)
        self._run = run
        self._tell_place = tell_place
        self._queue: list[str] = []
        self._told: dict[str, int] = {}
        self._busy: dict[int, tuple[str, asyncio.Task[None]]] = {}
        self._started = False

    # --- the queue ------------------------------------------------------------
    def start(self) -> None:
        """Jobs submitted before this wait; from now on they are dispatched."""
        self._started = True
        self._dispatch()

    def submit(self, job_id: str, first: bool = False) -> None:
        """Queue a job (``first``: ahead of the others, for one that was interrupted)."""
        if job_id in self._queue or self.slot_of(job_id) is not None:
            return
        if first:
            self._queue.insert(0, job_id)
        else:
            self._queue.append(job_id)
        self._dispatch()

    def withdraw(self, job_id: str) -> bool:
        """Take a waiting job out of the queue; False when it is not waiting."""
        if job_id not in self._queue:
            return False
        self._queue.remove(job_id)
        self._told.pop(job_id, None)
        self._tell_places()
        return True

    def waiting(self) -> list[str]:
        return list(self._queue)

    def slot_of(self, job_id: str) -> TrainerSlot | None:
        for index, (running, _) in self._busy.items():
            if running == job_id:
                return self.slots[index]
        return None

    def running(self) -> dict[str, TrainerSlot]:
        return {job_id: self.slots[index] for index, (job_id, _) in self._busy.items()}

    async def stop(self) -> None:
        self._started = False
        tasks = [task for _, task in self._busy.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- dispatch -------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._started and self._queue:
            free = next((s for s in self.slots if s.index not in self._busy), None)
            if free is None:
                break
            job_id = self._queue.pop(0)
            self._told.pop(job_id, None)
            task = asyncio.create_task(self._hold(free, job_id), name=f"train-{job_id}")
            self._busy[free.index] = (job_id, task)
        self._tell_places()

    async def _hold(self, slot: TrainerSlot, job_id: str) -> None:
        again = False
        try:
            again = await self._run(job_id, slot)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s in %s ended unexpectedly", job_id, slot.describe())
        finally:
            self._busy.pop(slot.index, None)
            if again:
                self._queue.insert(0, job_id)
            self._dispatch()

    def _tell_places(self) -> None:
        if not self._started:
            return
        for place, job_id in enumerate(self._queue, start=1):
            if self._told.get(job_id) != place:
                self._told[job_id] = place
                self._tell_place(job_id, place, len(self._busy))
