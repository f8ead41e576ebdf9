"""The one state machine of fine-tuning jobs: which status may follow which, and who says so.

    validating_files ─→ queued ⇄ running ─→ succeeded
           │              │ ↑      │
           │              ↓ │      ↓
           │             paused   (queued again: interrupted, resumes)
           └──────────────┴────────┴─→ failed | cancelled

Every status change is ``JobStore.transition(job_id, from_statuses, to, **changes)``,
a compare-and-set in SQLite: it happens only if the job is still in one of
``from_statuses`` at that moment, else it is refused, logged, and returns
False. The caller then stops what it was doing: a job that was cancelled
while it was being validated, trained or registered stays cancelled, and a
late failure or success never overwrites it (cancel wins). Terminal statuses
have no way out. A transition missing from ``TRANSITIONS`` is a bug in the
caller and raises ``IllegalTransitionError``.
"""

from __future__ import annotations

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
# The statuses of a job that is still going somewhere: what fail and cancel come from.
ACTIVE = ("validating_files", "queued", "running", "paused")

TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "paused", "failed", "cancelled"}),
    # running → queued: the trainer was interrupted (or the gateway stopped) and resumes.
    "running": frozenset({"succeeded", "queued", "paused", "failed", "cancelled"}),
    "paused": frozenset({"queued", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class IllegalTransitionError(Exception):
    """A caller asked for a status change the table does not have: a bug, not a race."""


def check_transition(from_statuses: tuple[str, ...], to: str) -> None:
    for status in from_statuses:
        if to not in TRANSITIONS.get(status, frozenset()):
            raise IllegalTransitionError(f"a job may not go from {status} to {to}")
