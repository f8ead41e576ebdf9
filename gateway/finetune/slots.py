"""Trainer slots: the device groups that jobs train on, one job per slot at a time.

``tuner_slots`` lists them. Each slot is a list of devices, and runs one
trainer process per device:

- GPU ids (``["0", "1"]``): the slot sees only those GPUs
  (``CUDA_VISIBLE_DEVICES``), one rank per GPU;
- CPU thread counts (``[2, 2]``): each rank gets that many cores of its own,
  given out in order across all slots, so that slots do not share cores while
  the machine has enough of them.

Unset, there is one slot with one process that uses the whole machine, as a
plain ``python -m tuner.job`` would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.settings import Settings
from tuner.distributed import RANK_CPUS_ENV

_GPU = "gpu"
_CPU = "cpu"


@dataclass(frozen=True)
class TrainerSlot:
    index: int
    gpus: tuple[str, ...] = ()
    cpu_groups: tuple[tuple[int, ...], ...] = ()  # cores of each rank

    @property
    def processes(self) -> int:
        return max(1, len(self.gpus) or len(self.cpu_groups))

    def env(self) -> dict[str, str]:
        """What the trainer's environment says about the devices it may use."""
        env: dict[str, str] = {}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        if self.cpu_groups:
            env[RANK_CPUS_ENV] = ";".join(
                ",".join(str(core) for core in group) for group in self.cpu_groups
            )
            # Until a rank pins itself: each library's pool starts at its share.
            env["OMP_NUM_THREADS"] = str(len(self.cpu_groups[0]))
        return env

    def describe(self) -> str:
        if self.gpus:
            devices = f"GPU {', '.join(self.gpus)}"
        elif self.cpu_groups:
            devices = "; ".join(f"cores {_cores(group)}" for group in self.cpu_groups)
        else:
            devices = "the whole machine"
        ranks = f", {self.processes} processes" if self.processes > 1 else ""
        return f"trainer slot {self.index} ({devices}{ranks})"


def slots_from_settings(settings: Settings, cpu_count: int | None = None) -> list[TrainerSlot]:
    if settings.tuner_slots is None:
        return [TrainerSlot(0)]
    cores = _CoreAllotment(cpu_count or os.cpu_count() or 1)
    slots = []
    for index, spec in enumerate(settings.tuner_slots):
        devices: Sequence[int | str] = spec if isinstance(spec, list) else [spec]
        kind = _GPU if isinstance(devices[0], str) else _CPU
        if kind == _GPU:
            slots.append(TrainerSlot(index, gpus=tuple(str(d) for d in devices)))
        else:
            groups = tuple(cores.take(int(threads)) for threads in devices)
            slots.append(TrainerSlot(index, cpu_groups=groups))
    return slots


class _CoreAllotment:
    """Hands out cores in order, wrapping round when the slots ask for more than there are."""

    def __init__(self, cpu_count: int) -> None:
        self._count = cpu_count
        self._next = 0

    def take(self, threads: int) -> tuple[int, ...]:
        threads = min(threads, self._count)
        group = tuple((self._next + i) % self._count for i in range(threads))
        self._next = (self._next + threads) % self._count
        return group


def _cores(group: tuple[int, ...]) -> str:
    return ",".join(str(core) for core in group)
