"""Named points in a job's or a merge's stages, where a test waits or injects a fault.

Production code calls ``await hooks.reach("registered", job_id=...)`` at a
few places where races matter (see ``POINTS``); nothing is registered there
and it returns at once. A test registers an async function at a point to hold
the stage on an event or barrier while it cancels, deletes or kills, or to
raise an error (a full disk) exactly there: real timing, no sleeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# The points, and where each is reached.
POINTS = {
    "validated": "a job's files are checked, before its run folder is written",
    "trainer_finished": "a job's trainer ended with a result, before success starts",
    "registered": "a job's adapter is registered, before it is preloaded and sampled",
    "before_succeeded": "a job's samples and results are stored, before it becomes succeeded",
    "merge_exported": "a merge's GGUF is written, before its manifest and catalog entry",
}

Hook = Callable[..., Awaitable[None]]


class StageHooks:
    def __init__(self) -> None:
        self._hooks: dict[str, Hook] = {}

    def at(self, point: str, hook: Hook | None) -> None:
        """Run ``hook(**context)`` whenever ``point`` is reached (None: nothing)."""
        if point not in POINTS:
            raise KeyError(f"no stage point {point!r}; known: {', '.join(POINTS)}")
        if hook is None:
            self._hooks.pop(point, None)
        else:
            self._hooks[point] = hook

    async def reach(self, point: str, **context: Any) -> None:
        hook = self._hooks.get(point)
        if hook is not None:
            await hook(**context)
