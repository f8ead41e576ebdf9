"""Reads a safetensors file's header (names, dtypes, shapes) without loading any tensor.

The format is an 8-byte little-endian header length, then a JSON header. No
code path here can execute anything from the file, unlike a pickle.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from adapters.errors import InvalidAdapterError

_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_tensor_infos(path: Path) -> dict[str, TensorInfo]:
    size = path.stat().st_size
    with path.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) != 8:
            raise InvalidAdapterError("adapter_model.safetensors is not a safetensors file.")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise InvalidAdapterError("adapter_model.safetensors has a corrupt header.")
        try:
            header = json.loads(stream.read(header_len))
        except ValueError:
            raise InvalidAdapterError("adapter_model.safetensors has a corrupt header.") from None
    if not isinstance(header, dict):
        raise InvalidAdapterError("adapter_model.safetensors has a corrupt header.")
    infos: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            infos[name] = TensorInfo(str(meta["dtype"]), tuple(int(d) for d in meta["shape"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidAdapterError(f"Tensor '{name}' has a corrupt header entry.") from None
    if not infos:
        raise InvalidAdapterError("adapter_model.safetensors holds no tensors.")
    return infos
