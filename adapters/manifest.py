"""The manifest stored beside each adapter: who it is, what it fits, where it came from.

Manifests (the adapters' and the merged models') are written whole or not at
all: a temporary file, fsynced, renamed over the old one, then the folder
fsynced (``write_atomic``). One that cannot be read all the same (a torn write
from before, a disk error) is moved aside as ``<name>.corrupt-<time>``
(``quarantine``), with a log line, and start-up goes on without it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterManifest:
    id: str
    alias: str
    base: str
    owner: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    weights_sha256: str
    created_at: int
    source: dict[str, Any] = field(default_factory=dict)  # {"job_id": ...} or {"import": ...}
    dataset_sha256: str | None = None
    chat_template: str | None = None
    eos_token: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> AdapterManifest:
        data = json.loads(path.read_text())
        data["target_modules"] = tuple(data.get("target_modules") or ())
        return cls(**data)

    def to_openai(self, root: str) -> dict[str, Any]:
        """The adapter as the admin API and /v1/models show it."""
        return {
            "id": self.id,
            "object": "adapter",
            "created": self.created_at,
            "owned_by": self.owner,
            "alias": self.alias,
            "base": self.base,
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "dataset_sha256": self.dataset_sha256,
            "root": root,
        }


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole: a crash leaves the old file or the new one."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as writer:
            writer.write(data)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def quarantine(path: Path, why: str) -> Path | None:
    """Move an unreadable manifest aside (``<name>.corrupt-<time>``), logged; its new path."""
    target = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    try:
        os.replace(path, target)
    except OSError as error:
        log.warning("could not move the unreadable manifest %s aside: %s", path, error)
        return None
    log.warning("moved the unreadable manifest %s aside to %s (%s)", path, target.name, why)
    return target
