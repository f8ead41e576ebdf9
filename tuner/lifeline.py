"""Every process of a trainer dies with its parent, whatever kills the parent.

A trainer is a tree: the gateway starts either the trainer itself or a
launcher (``tuner.launch``), and a launcher starts one rank per device, each
in a session of its own (torchrun does that). A signal to the trainer's
process group therefore never reaches the ranks, and a parent killed with
SIGKILL gets no chance to stop them. So each process asks the kernel at its
start to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``).

That request only covers a parent that dies later: a parent that died between
the fork and the request has already left the child to init. The parent's pid
is therefore handed down in ``TUNEGATE_PARENT_PID``, and a process whose
parent is no longer that pid exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal

PARENT_PID_ENV = "TUNEGATE_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_ORPHANED_EXIT_STATUS = 70


def die_with_parent() -> None:
    """Call first thing in every trainer process."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask the kernel for
        return
    expected = os.environ.get(PARENT_PID_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):
        os._exit(_ORPHANED_EXIT_STATUS)


def hand_down_parent_pid() -> None:
    """Before starting children: they must die with this process."""
    os.environ[PARENT_PID_ENV] = str(os.getpid())
