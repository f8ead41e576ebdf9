"""Adapters as servable models: the registry on disk, the model table, the engine.

Registering adds the adapter to the model table (id and alias); serving loads
it into vLLM on first use; removing unloads it from the engine, takes it off
the table and deletes it from disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from adapters.errors import AdapterNotFoundError, InvalidAdapterError
from adapters.manifest import AdapterManifest
from adapters.registry import AdapterRegistry, RegisterRequest
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine
from gateway.errors import ModelNotFoundError


class AdapterService:
    def __init__(
        self, registry: AdapterRegistry, catalog: ModelCatalog, engines: dict[str, Engine]
    ) -> None:
        self.registry = registry
        self._catalog = catalog
        self._engines = engines

    def load_registered(self) -> None:
        for manifest in self.registry.load():
            if manifest.base in self._catalog:
                self._catalog.add(self._entry_for(manifest), alias=manifest.alias)

    async def register(
        self, request: RegisterRequest, extra_roots: tuple[Path, ...] = ()
    ) -> AdapterManifest:
        self._vllm_base(request.base)
        # Copying and hashing weights is file work: keep it off the event loop.
        manifest = await asyncio.to_thread(self.registry.register, request, extra_roots)
        self._catalog.add(self._entry_for(manifest), alias=manifest.alias)
        return manifest

    async def preload(self, adapter_id: str) -> None:
        """Load into the engine now, so the first request answers at once."""
        entry = self._catalog.resolve(adapter_id)
        lease = await self._engines[entry.engine_key].acquire(entry)
        lease.done()

    def get(self, name: str) -> AdapterManifest:
        return self.registry.get(self._adapter_entry(name).id)

    def list(self) -> list[AdapterManifest]:
        return self.registry.list()

    async def remove(self, name: str) -> AdapterManifest:
        entry = self._adapter_entry(name)
        await self._engines[entry.engine_key].unload(entry)
        self._catalog.remove(entry.id)
        return await asyncio.to_thread(self.registry.remove, entry.id)

    def describe(self, manifest: AdapterManifest) -> dict[str, Any]:
        described = manifest.to_openai(root=manifest.base)
        described["aliases"] = self._catalog.aliases_of(manifest.id)
        return described

    # --- helpers ------------------------------------------------------------
    def _adapter_entry(self, name: str) -> ModelEntry:
        try:
            entry = self._catalog.resolve(name)
        except ModelNotFoundError:
            raise AdapterNotFoundError(name) from None
        if entry.kind != "adapter":
            raise AdapterNotFoundError(name)
        return entry

    def _vllm_base(self, base: str) -> ModelEntry:
        entry = self._catalog.resolve(base) if base in self._catalog else None
        if entry is None or entry.kind != "base" or entry.engine != "vllm":
            raise InvalidAdapterError(f"'{base}' is not a base model served on vLLM.", param="base")
        return entry

    def _entry_for(self, manifest: AdapterManifest) -> ModelEntry:
        base = self._vllm_base(manifest.base)
        lineage = {
            "alias": manifest.alias,
            "source": manifest.source,
            "dataset_sha256": manifest.dataset_sha256,
            "weights_sha256": manifest.weights_sha256,
            "rank": manifest.rank,
        }
        return ModelEntry(
            id=manifest.id,
            kind="adapter",
            engine=base.engine,
            engine_key=base.engine_key,
            weights=self.registry.folder_of(manifest.id),
            owned_by=manifest.owner,
            parent=base.id,
            root=base.id,
            created=manifest.created_at,
            extra=lineage,
        )
