"""Runs one job as several processes, one per device: ``tuner.job`` on every rank.

    python -m tuner.launch --processes N [--accelerate-config FILE] RUN_DIR

Without a config this is torchrun (DDP: gloo on CPUs, NCCL on GPUs); with an
accelerate config file it is ``accelerate launch`` with that file, which is how
FSDP or DeepSpeed are chosen (see docs/multi-process-training.md). Both run
in this process, so that the ranks are this process's children and die with
it: each rank arms its own parent-death signal at start (``tuner.parent_death``),
with this process named as the parent it must have.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from tuner.parent_death import arm_for_this_process_tree

TRAINER_MODULE = "tuner.job"


def torchrun_argv(processes: int, run_dir: Path) -> list[str]:
    # --standalone: a rendezvous on a free local port, so two jobs never collide.
    return [
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        "--module",
        TRAINER_MODULE,
        str(run_dir),
    ]


def accelerate_argv(processes: int, config: Path, run_dir: Path, port: int) -> list[str]:
    return [
        "--config_file",
        str(config),
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(port),
        "--module",
        TRAINER_MODULE,
        str(run_dir),
    ]


def _torchrun(argv: list[str]) -> None:
    from torch.distributed.run import main

    main(argv)


def _accelerate(argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(argv))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    arm_for_this_process_tree()  # and names this process as the ranks' parent
    parser = argparse.ArgumentParser(prog="python -m tuner.launch")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--accelerate-config", type=Path)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    launcher: Callable[[list[str]], None]
    if args.accelerate_config is not None:
        launcher = _accelerate
        launch_argv = accelerate_argv(
            args.processes, args.accelerate_config, args.run_dir, _free_port()
        )
    else:
        launcher, launch_argv = _torchrun, torchrun_argv(args.processes, args.run_dir)
    try:
        launcher(launch_argv)
    except SystemExit as stopped:  # the launchers exit with the ranks' status
        return int(stopped.code or 0) if not isinstance(stopped.code, str) else 1
    except Exception as failed:  # a rank failed: torchrun raises ChildFailedError
        print(f"launch failed: {type(failed).__name__}: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
