"""Adapters as servable models: the registry on disk, the model table, the engine.

Registering adds the adapter to the model table (id and alias); serving loads
it into vLLM on first use. Removing goes in the one order that never serves a
half-deleted adapter: off the table first (new requests get 404 at once), then
unloaded from every replica once its requests in flight have ended, then its
files deleted, then the models made from it (merges) removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from adapters.errors import AdapterNotFoundError, InvalidAdapterError
from adapters.manifest import AdapterManifest
from adapters.registry import AdapterRegistry, RegisterRequest
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import Engine
from gateway.engines.llamacpp_lora import gguf_adapter_id, gguf_alias
from gateway.errors import ModelNotFoundError, TunegateError

log = logging.getLogger(__name__)


class AdapterService:
    def __init__(
        self, registry: AdapterRegistry, catalog: ModelCatalog, engines: dict[str, Engine]
    ) -> None:
        self.registry = registry
        self._catalog = catalog
        self._engines = engines
        # How to remove a model made from an adapter, by its kind ("merged": MergeService).
        self._dependents: dict[str, Callable[[str], Awaitable[None]]] = {}

    def remove_dependents_with(self, kind: str, remove: Callable[[str], Awaitable[None]]) -> None:
        """Models of ``kind`` whose parent is a removed adapter are removed with ``remove``."""
        self._dependents[kind] = remove

    def load_registered(self) -> None:
        for manifest in self.registry.load():
            try:
                self._add(manifest)
            except InvalidAdapterError:  # its base is not served by this gateway now
                log.warning("not serving %s: its base is not served here", manifest.id)

    async def register(
        self, request: RegisterRequest, extra_roots: tuple[Path, ...] = ()
    ) -> AdapterManifest:
        self._serving_bases(request.base)
        # Copying and hashing weights is file work: keep it off the event loop.
        manifest = await asyncio.to_thread(self.registry.register, request, extra_roots)
        self._add(manifest)
        return manifest

    async def preload(self, adapter_id: str) -> None:
        """Load into the engine now, so the first request answers at once."""
        entry = self._catalog.resolve(adapter_id)
        lease = await self._engines[entry.engine_key].acquire(entry)
        lease.done()

    def get(self, name: str) -> AdapterManifest:
        return self.registry.get(_adapter_id(self._adapter_entry(name)))

    def list(self) -> list[AdapterManifest]:
        return self.registry.list()

    async def remove(self, name: str) -> AdapterManifest:
        adapter_id = _adapter_id(self._adapter_entry(name))
        # Its rows on every engine (vLLM, and llama.cpp as ``<id>:gguf``) go together.
        rows = [e for e in self._catalog.entries() if _is_row_of(e, adapter_id)]
        for row in rows:
            self._catalog.remove(row.id)
        for row in rows:
            await self._engines[row.engine_key].unload(row)
        manifest = await asyncio.to_thread(self.registry.remove, adapter_id)
        await self._remove_dependents(adapter_id)
        return manifest

    async def _remove_dependents(self, adapter_id: str) -> None:
        for child in self._catalog.entries():
            remove = self._dependents.get(child.kind)
            if child.parent != adapter_id or remove is None:
                continue
            try:
                await remove(child.id)
            except TunegateError as error:  # the adapter is gone already: remove the rest
                log.warning("could not remove %s with its adapter: %s", child.id, error.message)

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

    def _serving_bases(self, base: str) -> tuple[ModelEntry | None, ModelEntry | None]:
        """The base's model on vLLM and its GGUF model on llama.cpp (either may be None)."""
        entry = self._catalog.resolve(base) if base in self._catalog else None
        on_vllm = entry is not None and entry.kind == "base" and entry.engine == "vllm"
        vllm = entry if on_vllm else None
        gguf_base_of = getattr(self._engines.get("llama.cpp"), "gguf_base_of", None)
        gguf = gguf_base_of(base) if gguf_base_of is not None else None
        if vllm is None and gguf is None:
            raise InvalidAdapterError(
                f"'{base}' is not a base model served here (on vLLM, or on llama.cpp from a GGUF).",
                param="base",
            )
        return vllm, gguf

    def _add(self, manifest: AdapterManifest) -> None:
        """The adapter's rows: on vLLM under its id; on llama.cpp where its base has a GGUF,
        under the id ``llamacpp_lora.gguf_adapter_id`` gives it."""
        vllm, gguf = self._serving_bases(manifest.base)
        if vllm is not None:
            self._catalog.add(self._entry_for(manifest, vllm, manifest.id), alias=manifest.alias)
        if gguf is not None:
            twin = vllm is not None
            alias = gguf_alias(manifest.alias, twin)
            entry = self._entry_for(manifest, gguf, gguf_adapter_id(manifest.id, twin), alias)
            self._catalog.add(entry, alias=alias)
            self._engines[entry.engine_key].add_adapter(entry)  # type: ignore[attr-defined]

    def _entry_for(
        self, manifest: AdapterManifest, base: ModelEntry, model_id: str, alias: str | None = None
    ) -> ModelEntry:
        lineage = {
            "alias": manifest.alias if alias is None else alias,
            "source": manifest.source,
            "dataset_sha256": manifest.dataset_sha256,
            "weights_sha256": manifest.weights_sha256,
            "rank": manifest.rank,
        }
        if model_id != manifest.id:
            lineage["adapter"] = manifest.id  # the same adapter, on another engine
        return ModelEntry(
            id=model_id,
            kind="adapter",
            engine=base.engine,
            engine_key=base.engine_key,
            weights=self.registry.folder_of(manifest.id),
            owned_by=manifest.owner,
            parent=base.id,
            root=manifest.base,
            created=manifest.created_at,
            extra=lineage,
        )


def _is_row_of(entry: ModelEntry, adapter_id: str) -> bool:
    return entry.kind == "adapter" and _adapter_id(entry) == adapter_id


def _adapter_id(entry: ModelEntry) -> str:
    """The registry id behind a row (a llama.cpp row names its adapter in ``extra``)."""
    return str(entry.extra.get("adapter", entry.id))
