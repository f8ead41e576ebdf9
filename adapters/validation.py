"""Checks an adapter before anything is registered.

- Paths: every file must resolve inside an allowed folder; a symlink out is refused.
- Formats: safetensors only. Pickle-based files (.bin, .pt, ...) are refused
  and never opened, let alone unpickled.
- Content: a PEFT LoRA config, a rank within the engine's limit, and weights
  whose shapes fit the base model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.architecture import BaseShape, check_fits_base
from adapters.errors import InvalidAdapterError
from adapters.safetensors_header import read_tensor_infos

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "manifest.json"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LoraSummary:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]


def resolve_inside(path: Path, roots: list[Path], param: str = "path") -> Path:
    """The real path of ``path``, which must lie inside one of ``roots``."""
    if "\x00" in str(path):
        raise InvalidAdapterError("Paths may not contain NUL characters.", param=param)
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(os.path.realpath(root)) for root in roots):
        raise InvalidAdapterError(
            "The path is outside the folders adapters may be imported from.", param=param
        )
    return real


def check_source_files(source: Path, roots: list[Path]) -> tuple[Path, Path]:
    """The weights and config files of an adapter folder, after path and format checks."""
    folder = resolve_inside(source, roots)
    if not folder.is_dir():
        raise InvalidAdapterError("The adapter path is not a folder.", param="path")
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.exists():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise InvalidAdapterError(
                f"Only safetensors adapters are accepted; found {', '.join(pickles)}. "
                "Convert it with PEFT's save_pretrained(safe_serialization=True).",
                param="path",
            )
        raise InvalidAdapterError(f"The folder has no {WEIGHTS_FILE}.", param="path")
    if not config.exists():
        raise InvalidAdapterError(f"The folder has no {CONFIG_FILE}.", param="path")
    for file in (weights, config):
        resolved = resolve_inside(file, roots)
        if not resolved.is_file():
            raise InvalidAdapterError(f"{file.name} is not a regular file.", param="path")
    return resolve_inside(weights, roots), resolve_inside(config, roots)


def read_lora_config(config_path: Path) -> dict[str, Any]:
    if config_path.stat().st_size > _MAX_CONFIG_BYTES:
        raise InvalidAdapterError(f"{CONFIG_FILE} is too large.")
    try:
        config = json.loads(config_path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise InvalidAdapterError(f"{CONFIG_FILE} is not valid JSON.") from None
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{CONFIG_FILE} must be a JSON object.")
    return config


def summarise_lora(config: dict[str, Any], max_rank: int) -> LoraSummary:
    kind = config.get("peft_type")
    if kind != "LORA":
        what = f"this is {kind!r}" if kind else f"{CONFIG_FILE} names no peft_type"
        raise InvalidAdapterError(f"Only LoRA adapters are served; {what}.")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise InvalidAdapterError("adapter_config.json needs a positive integer rank 'r'.")
    if rank > max_rank:
        raise InvalidAdapterError(
            f"The adapter's rank {rank} is above the engine's limit of {max_rank} "
            "(setting vllm_max_lora_rank)."
        )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise InvalidAdapterError(
            "Adapters with per-module ranks (rank_pattern) are not supported."
        )
    if config.get("modules_to_save"):
        raise InvalidAdapterError(
            "Adapters with fully trained modules (modules_to_save) are not supported."
        )
    targets = config.get("target_modules") or []
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(str(t) for t in targets))
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, int | float):
        raise InvalidAdapterError("adapter_config.json has a non-numeric 'lora_alpha'.")
    return LoraSummary(rank, float(alpha), targets)


def validate_adapter_files(
    weights: Path, config_path: Path, base_id: str, base_config: Path, max_rank: int
) -> LoraSummary:
    summary = summarise_lora(read_lora_config(config_path), max_rank)
    check_fits_base(
        read_tensor_infos(weights), summary.rank, BaseShape.from_config_file(base_config), base_id
    )
    return summary
