"""The parent-death signal, for the gateway's own processes: see ``tuner.parent_death``.

The functions live in ``tuner`` (which must not import ``gateway``); engine
processes (vLLM's ``sitecustomize``) keep importing them from here.
"""

from tuner.parent_death import (
    PARENT_VARIABLE,
    arm_for_this_process_tree,
    set_parent_death_signal,
)

__all__ = ["PARENT_VARIABLE", "arm_for_this_process_tree", "set_parent_death_signal"]
