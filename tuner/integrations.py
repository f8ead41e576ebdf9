"""Where a run reports its metrics besides its own events: a job's ``integrations``.

The gateway writes the job's integrations into ``RUN_DIR/job.json`` (checked there
with OpenAI's rules). For ``wandb``, the trainer's W&B callback is turned on and told
the project, run name, entity and tags through W&B's own environment variables; it
runs offline (``WANDB_MODE=offline``, files under the run folder) unless the user's
environment sets ``WANDB_MODE`` or ``WANDB_DIR`` already: nothing leaves the machine
by default. ``wandb sync`` uploads an offline run later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

Environment = MutableMapping[str, str]


def _wandb(options: dict[str, Any], run_dir: Path, env: Environment) -> str:
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_DIR", str(run_dir))
    env.setdefault("WANDB_SILENT", "true")
    named = {
        "WANDB_PROJECT": options.get("project"),
        "WANDB_NAME": options.get("name"),
        "WANDB_ENTITY": options.get("entity"),
        "WANDB_TAGS": ",".join(options.get("tags") or []) or None,
    }
    env.update({key: value for key, value in named.items() if value})
    return "wandb"


# Integration type -> sets up its environment, returns the transformers report_to name.
_REPORTERS: dict[str, Callable[[dict[str, Any], Path, Environment], str]] = {
    "wandb": _wandb,
}


def report_to(run_dir: Path, env: Environment | None = None) -> list[str]:
    """The ``report_to`` list of the run in ``run_dir``, its environment set up."""
    env = os.environ if env is None else env
    job_file = run_dir / "job.json"
    if not job_file.is_file():
        return []
    integrations = json.loads(job_file.read_text()).get("integrations") or []
    return [
        _REPORTERS[item["type"]](item.get(item["type"]) or {}, run_dir, env)
        for item in integrations
        if item.get("type") in _REPORTERS
    ]
