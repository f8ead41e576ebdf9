"""Where each managed vLLM replica runs: its GPUs, or its share of the CPU cores.

On a GPU box each replica sees ``devices_per_replica`` GPUs through
``CUDA_VISIBLE_DEVICES``; inside a replica, vLLM's own tensor/pipeline
parallelism spreads the model over them. On a CPU box the cores this process
may use are split evenly between the replicas and given to vLLM's thread
binding (``VLLM_CPU_OMP_THREADS_BIND``, one ``|``-separated group per
tensor-parallel rank), so two replicas never fight over a core.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from pathlib import Path

_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


class PlacementError(ValueError):
    """The machine cannot hold the replicas asked for."""


def detect_device(setting: str) -> str:
    """``cpu`` or ``gpu``: the setting, or for ``auto`` what vLLM build and GPUs there are."""
    if setting != "auto":
        return setting
    try:
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    return "gpu" if visible_gpus() else "cpu"


def visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    if _NVIDIA_GPUS.is_dir():
        return [str(i) for i in range(len(list(_NVIDIA_GPUS.iterdir())))]
    return []


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def tensor_parallel_size(extra_args: Sequence[str]) -> int:
    """The ``--tensor-parallel-size``/``-tp`` value among vLLM's extra flags (1 when absent)."""
    for index, arg in enumerate(extra_args):
        for flag in ("--tensor-parallel-size", "-tp"):
            if arg == flag and index + 1 < len(extra_args):
                return int(extra_args[index + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    return 1


def gpu_placements(replicas: int, per_replica: int, gpus: Sequence[str]) -> list[dict[str, str]]:
    needed = replicas * per_replica
    if needed > len(gpus):
        raise PlacementError(
            f"{replicas} vLLM replicas of {per_replica} GPU(s) need {needed} GPUs; "
            f"{len(gpus)} are visible."
        )
    return [
        {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per_replica : (i + 1) * per_replica])}
        for i in range(replicas)
    ]


def cpu_placements(replicas: int, cores: Sequence[int], ranks: int = 1) -> list[dict[str, str]]:
    """One thread-binding per replica, or nothing at all for a lone replica (vLLM's own
    automatic binding then applies, as without replicas)."""
    if replicas <= 1 and ranks <= 1:
        return [{} for _ in range(replicas)]
    groups = replicas * ranks
    if groups > len(cores):
        raise PlacementError(
            f"{replicas} vLLM replicas x {ranks} tensor-parallel ranks need {groups} CPU cores; "
            f"{len(cores)} are usable."
        )
    share = len(cores) // groups
    chunks = [cores[i * share : (i + 1) * share] for i in range(groups)]
    return [
        {
            "VLLM_CPU_OMP_THREADS_BIND": "|".join(
                ",".join(str(c) for c in chunk) for chunk in chunks[r * ranks : (r + 1) * ranks]
            )
        }
        for r in range(replicas)
    ]


def replica_placements(
    device: str, replicas: int, per_replica_gpus: int, extra_args: Sequence[str]
) -> list[dict[str, str]]:
    """The environment that pins each of ``replicas`` managed replicas."""
    if device == "gpu":
        return gpu_placements(replicas, per_replica_gpus, visible_gpus())
    return cpu_placements(replicas, usable_cores(), tensor_parallel_size(extra_args))
