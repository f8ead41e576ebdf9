"""The manifest stored beside each adapter: who it is, what it fits, where it came from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
