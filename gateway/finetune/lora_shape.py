"""The LoRA shape of an adapter a job continues: the new adapter keeps it."""

from __future__ import annotations

from typing import Any

from adapters.manifest import AdapterManifest
from gateway.errors import InvalidRequestError
from gateway.finetune.protocol import Hyperparameters

_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_target_modules")


def lora_of(adapter: AdapterManifest) -> dict[str, Any]:
    return {
        "lora_rank": adapter.rank,
        "lora_alpha": int(adapter.alpha),
        "lora_target_modules": sorted(adapter.target_modules),
    }


def check_lora_matches(chosen: Hyperparameters, parent: AdapterManifest) -> None:
    """A continued adapter keeps its shape; asking for another one is an error, not ignored."""
    shape = lora_of(parent)
    for name in _LORA_FIELDS:
        value = getattr(chosen, name)
        wanted = sorted(value) if isinstance(value, list) else value
        if value != "auto" and wanted != shape[name]:
            raise InvalidRequestError(
                f"'{parent.id}' is continued with its own LoRA shape ({name} "
                f'{shape[name]}); leave {name} "auto" or start from the base.',
                param=f"hyperparameters.{name}",
            )
