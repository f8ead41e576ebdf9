"""The registry of servable adapters, on disk under ``<data root>/adapters/<id>/``.

Each adapter folder holds ``adapter_model.safetensors``, ``adapter_config.json``
and ``manifest.json``. Register and remove are atomic:

- register copies into ``.staging/<tmp>/``, writes the manifest last, fsyncs,
  then renames the folder into place: an adapter appears whole or not at all;
- remove renames the folder into ``.trash/`` first, then deletes it.

Whatever an interrupted run leaves in ``.staging`` or ``.trash`` is discarded
on the next start, and a folder without a readable manifest is never served:
an unreadable one is moved aside (``manifest.json.corrupt-<time>``) with a log
line, and start-up goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import AdapterExistsError, AdapterNotFoundError, InvalidAdapterError
from adapters.manifest import AdapterManifest, fsync_dir, quarantine
from adapters.naming import DEFAULT_OWNER, check_lookup_name, make_adapter_id, new_unique_part
from adapters.validation import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    check_source_files,
    validate_adapter_files,
)

log = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class RegisterRequest:
    """What to register: a folder holding the two adapter files, and how to name it."""

    folder: Path
    base: str
    suffix: str
    owner: str = DEFAULT_OWNER
    unique: str | None = None  # the last id part; a job id for trained adapters
    source: dict[str, Any] | None = None
    dataset_sha256: str | None = None
    checkpoint_step: int | None = None  # a job's checkpoint: ``…:ckpt-step-N``, no alias

    @property
    def alias(self) -> str:
        return self.suffix if self.checkpoint_step is None else ""


class AdapterRegistry:
    def __init__(
        self, root: Path, import_roots: list[Path], bases: dict[str, Path], max_rank: int
    ) -> None:
        self.root = root
        self.import_roots = list(import_roots)
        self._bases = bases  # base id -> HF checkpoint dir
        self._max_rank = max_rank
        self._manifests: dict[str, AdapterManifest] = {}
        self._staging = root / ".staging"
        self._trash = root / ".trash"

    # --- reading ------------------------------------------------------------
    def load(self) -> list[AdapterManifest]:
        """Read what is on disk, discarding leftovers of interrupted writes."""
        self.root.mkdir(parents=True, exist_ok=True)
        for leftovers in (self._staging, self._trash):
            shutil.rmtree(leftovers, ignore_errors=True)
        self._manifests.clear()
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            manifest = self._read_manifest(folder)
            if manifest is not None:
                self._manifests[manifest.id] = manifest
        return self.list()

    def list(self) -> list[AdapterManifest]:
        return sorted(self._manifests.values(), key=lambda m: (m.created_at, m.id))

    def get(self, adapter_id: str) -> AdapterManifest:
        check_lookup_name(adapter_id)
        manifest = self._manifests.get(adapter_id)
        if manifest is None:
            raise AdapterNotFoundError(adapter_id)
        return manifest

    def folder_of(self, adapter_id: str) -> Path:
        return self.root / adapter_id

    def staging_dir(self) -> Path:
        """A fresh folder inside the registry, for uploads before they are checked."""
        self._staging.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="upload-", dir=self._staging))

    # --- writing ------------------------------------------------------------
    def register(
        self, request: RegisterRequest, extra_roots: tuple[Path, ...] = ()
    ) -> AdapterManifest:
        base_dir = self._bases.get(request.base)
        if base_dir is None:
            known = ", ".join(sorted(self._bases)) or "none"
            raise InvalidAdapterError(
                f"'{request.base}' is not a base model served on vLLM (known: {known}).",
                param="base",
            )
        unique = request.unique or new_unique_part()
        adapter_id = str(
            make_adapter_id(
                request.base, request.suffix, unique, request.owner, request.checkpoint_step
            )
        )
        if adapter_id in self._manifests or (self.root / adapter_id).exists():
            raise AdapterExistsError(f"An adapter '{adapter_id}' already exists.", param="id")
        roots = [*self.import_roots, *extra_roots, self._staging]
        weights, config = check_source_files(request.folder, roots)
        summary = validate_adapter_files(
            weights, config, request.base, base_dir / "config.json", self._max_rank
        )
        template, eos = _chat_template_and_eos(base_dir)
        staging = Path(tempfile.mkdtemp(prefix="adapter-", dir=self._ensure(self._staging)))
        try:
            digest = _copy_with_sha256(weights, staging / WEIGHTS_FILE)
            _copy_with_sha256(config, staging / CONFIG_FILE)
            manifest = AdapterManifest(
                id=adapter_id,
                alias=request.alias,
                base=request.base,
                owner=request.owner,
                rank=summary.rank,
                alpha=summary.alpha,
                target_modules=summary.target_modules,
                weights_sha256=digest,
                created_at=int(time.time()),
                source=request.source or {"import": "upload"},
                dataset_sha256=request.dataset_sha256,
                chat_template=template,
                eos_token=eos,
            )
            _write_synced(staging / MANIFEST_FILE, manifest.to_json().encode())
            fsync_dir(staging)
            os.replace(staging, self.root / adapter_id)
            fsync_dir(self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._manifests[adapter_id] = manifest
        log.info("registered adapter %s", adapter_id)
        return manifest

    def remove(self, adapter_id: str) -> AdapterManifest:
        manifest = self.get(adapter_id)
        doomed = Path(tempfile.mkdtemp(prefix="removed-", dir=self._ensure(self._trash)))
        os.replace(self.root / adapter_id, doomed / "adapter")
        fsync_dir(self.root)
        del self._manifests[adapter_id]
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("removed adapter %s", adapter_id)
        return manifest

    # --- helpers ------------------------------------------------------------
    def _read_manifest(self, folder: Path) -> AdapterManifest | None:
        path = folder / MANIFEST_FILE
        try:
            manifest = AdapterManifest.from_file(path)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring %s: no readable manifest (%s)", folder.name, type(exc).__name__)
            if path.is_file() and not isinstance(exc, PermissionError):
                quarantine(path, type(exc).__name__)  # torn: kept aside, never served
            return None
        if manifest.id != folder.name or not (folder / WEIGHTS_FILE).is_file():
            log.warning("ignoring %s: manifest does not match its folder", folder.name)
            return None
        return manifest

    @staticmethod
    def _ensure(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _copy_with_sha256(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(_COPY_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as writer:
        writer.write(data)
        writer.flush()
        os.fsync(writer.fileno())


def _chat_template_and_eos(base_dir: Path) -> tuple[str | None, str | None]:
    """The base's chat template and EOS token: what an adapter trained on it expects."""
    template_file = base_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else None
    eos = None
    tokenizer_config = base_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        config = json.loads(tokenizer_config.read_text())
        eos = config.get("eos_token") if isinstance(config.get("eos_token"), str) else None
        template = template or config.get("chat_template")
    return template, eos
