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
from gateway.model_names import OpenAINames

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
    root: str | None = None  # the base model at the start of the lineage
    created: int = field(default_factory=lambda: int(time.time()))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_openai(self) -> dict[str, Any]:
        """The ``/v1/models`` object: OpenAI's four fields, vLLM's root/parent, and ours."""
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "root": self.root or self.id,
            "parent": self.parent,
            "engine": self.engine,
            "kind": self.kind,
            **self.extra,
        }


class ModelCatalog:
    """Model ids, plus short aliases that resolve while exactly one model has them."""

    def __init__(self, openai_names: OpenAINames | None = None) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._aliases: dict[str, set[str]] = {}
        # OpenAI names (setting openai_models), consulted after ids and aliases miss.
        self.openai_names = openai_names or OpenAINames()

    def add(self, entry: ModelEntry, alias: str | None = None) -> None:
        """Add ``entry``; an empty alias adds none."""
        if entry.id in self._entries:
            raise ConflictError(f"The model id '{entry.id}' is already in use.", param="model")
        self._entries[entry.id] = entry
        if alias and alias != entry.id:
            self._aliases.setdefault(alias, set()).add(entry.id)

    def remove(self, model_id: str) -> ModelEntry:
        try:
            entry = self._entries.pop(model_id)
        except KeyError:
            raise ModelNotFoundError(model_id) from None
        for alias, ids in list(self._aliases.items()):
            ids.discard(model_id)
            if not ids:
                del self._aliases[alias]
        return entry

    def resolve(self, name: str) -> ModelEntry:
        """An id, or an alias that only one model has. Ids win over aliases."""
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        ids = self._aliases.get(name)
        if ids and len(ids) == 1:
            return self._entries[next(iter(ids))]
        local = self.openai_names.get(name)
        if local is not None and local != name and not ids:
            return self._resolve_mapped(name, local)
        if ids:
            raise ModelNotFoundError(
                name,
                f"'{name}' is an alias of several models ({', '.join(sorted(ids))}); "
                "use the full id.",
            )
        raise self.openai_names.not_found(name, self.base_ids())

    def _resolve_mapped(self, name: str, local: str) -> ModelEntry:
        entry = self._entries.get(local)
        if entry is None and len(ids := self._aliases.get(local, ())) == 1:
            entry = self._entries[next(iter(ids))]
        if entry is None:
            raise self.openai_names.not_found(name, self.base_ids())
        return entry

    def base_ids(self) -> list[str]:
        return [e.id for e in self.entries() if e.kind == "base"]

    def aliases_of(self, model_id: str) -> list[str]:
        return sorted(a for a, ids in self._aliases.items() if ids == {model_id})

    def entries(self) -> list[ModelEntry]:
        kind_order = {"base": 0, "adapter": 1, "merged": 2}
        return sorted(self._entries.values(), key=lambda e: (kind_order[e.kind], e.created, e.id))

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)
