"""The model table: every servable id and the engine that serves it.

Routing a request is one dictionary lookup here; adding a kind of model or an
engine adds rows, not branches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConflictError, ModelNotFoundError

ModelKind = Literal["base", "adapter", "merged"]


@dataclass(frozen=True)
class ModelEntry:
    """One servable model id.

    ``engine`` is the engine family shown to users (``vllm``, ``llama.cpp``);
    ``engine_key`` names the engine instance that serves the id; ``weights`` is
    what that engine loads (an HF dir, a GGUF file, an adapter dir).
    """

    id: str
    kind: ModelKind
    engine: str
    engine_key: str
    weights: Path | None
    owned_by: str = "tunegate"
    parent: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        """The ``/v1/models`` object: OpenAI's four fields, vLLM's root/parent, and ours."""
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "root": self.parent or self.id,
            "parent": self.parent,
            "engine": self.engine,
            "kind": self.kind,
            **self.extra,
        }


class ModelCatalog:
    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def add(self, entry: ModelEntry) -> None:
        if entry.id in self._entries:
            raise ConflictError(f"The model id '{entry.id}' is already in use.", param="model")
        self._entries[entry.id] = entry

    def remove(self, model_id: str) -> ModelEntry:
        try:
            return self._entries.pop(model_id)
        except KeyError:
            raise ModelNotFoundError(model_id) from None

    def resolve(self, model_id: str) -> ModelEntry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(model_id)
        return entry

    def entries(self) -> list[ModelEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.kind != "base", e.id))

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)
