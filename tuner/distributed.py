"""Which rank this trainer process is, and what rank 0 alone does.

A job runs as one process, or as one process per device under torchrun or
``accelerate launch`` (DDP; FSDP or DeepSpeed by an accelerate config). The
launcher says the rank in the environment. Only rank 0 speaks to the gateway
(progress, checkpoints, the result); every rank trains.

On CPU slots the gateway also says which cores each rank may use, in
``TUNEGATE_RANK_CPUS`` ("0,1;2,3": rank 0 gets cores 0 and 1, rank 1 gets 2
and 3), so that two slots never fight over the same cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RANK_CPUS_ENV = "TUNEGATE_RANK_CPUS"


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> Rank:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )


def cpus_of(rank: Rank, allotment: str) -> set[int] | None:
    """The cores ``rank`` may use, from the ``TUNEGATE_RANK_CPUS`` text; None: no pinning."""
    groups = [group for group in allotment.split(";") if group.strip()]
    if not groups:
        return None
    chosen = groups[rank.local_rank % len(groups)]
    return {int(core) for core in chosen.split(",") if core.strip()}


def pin_to_cpus(rank: Rank) -> None:
    """Keep this rank on its cores, with one compute thread per core."""
    cores = cpus_of(rank, os.environ.get(RANK_CPUS_ENV, ""))
    if not cores:
        return
    os.sched_setaffinity(0, cores)
    import torch

    torch.set_num_threads(len(cores))


def all_agree(flag: bool) -> bool:
    """True on every rank when any rank says True (a no-op for one process).

    Ranks must take decisions such as "stop now" together: a rank that stops
    alone leaves the others waiting in their next collective for ever.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    # NCCL reduces only tensors on the rank's GPU; gloo works on the CPU.
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
    vote = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def finish() -> None:
    """Leave the process group cleanly, so that no rank waits on another at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
