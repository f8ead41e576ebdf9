"""The parent-death signal: a process that asks for it is SIGKILLed when its parent dies.

Kept free of heavy imports: every process of an engine's tree loads it at start
(vLLM's engine core through ``gateway/engines/vllm_site/sitecustomize.py``,
trainer ranks in ``tuner``), so that a SIGKILLed gateway takes the whole tree
down, not only its direct children (the kernel clears the setting on fork and
the gateway can set it only for the processes it starts itself).

It lives in ``tuner`` because the trainer must not import the ``gateway`` package;
``gateway.parent_death`` names the same functions for the gateway's processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

# Which process a new one must have as its parent; one that finds another parent
# after arming the signal lost its parent before it could, and exits.
PARENT_VARIABLE = "TUNEGATE_EXPECTED_PARENT"
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(expected_parent: int | None = None) -> None:
    """SIGKILL this process when its parent dies; exit at once if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def arm_for_this_process_tree() -> None:
    """Arm the signal in this process (its parent named in the environment) and in
    every child it forks; children it starts anew call this again at their start."""
    expected = os.environ.get(PARENT_VARIABLE)
    set_parent_death_signal(int(expected) if expected and expected.isdigit() else None)
    os.environ[PARENT_VARIABLE] = str(os.getpid())
    forking_parent = [os.getpid()]

    def before_fork() -> None:
        forking_parent[0] = os.getpid()

    def in_child() -> None:
        set_parent_death_signal(forking_parent[0])
        os.environ[PARENT_VARIABLE] = str(os.getpid())

    os.register_at_fork(before=before_fork, after_in_child=in_child)
