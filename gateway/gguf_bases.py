"""Bases given only as a GGUF, made trainable: their HF checkpoint is derived once.

A base declared with ``gguf`` and no ``hf_dir`` is served on llama.cpp at once. In
the background, ``python -m tuner.gguf_checkpoint`` dequantises it into an HF
checkpoint under ``<data root>/models/<id>/`` (once; the next start finds it). When
that is done the base joins the trainable bases (the tuner trains the LoRA on the
checkpoint) and its adapters can be converted for llama.cpp, where they are served
on the original GGUF. Until then a fine-tuning request on it answers 503 with a
Retry-After; a GGUF whose architecture transformers cannot read answers 400 saying so.

What it means to train on a dequantised base: the LoRA learns corrections on top of
exactly the weights llama.cpp serves (a q4_K_M base's rounding included), so base +
adapter on llama.cpp is what was trained. The checkpoint is fp32: four bytes a
parameter on disk and in the trainer's memory, whatever the GGUF's quantisation.

Each base's state is shown in ``/v1/models`` as ``fine_tuning`` on its entry.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.base_models import checkpoint_is_complete
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.llamacpp import LlamaCppEngine
from gateway.engines.process import signal_group
from gateway.errors import EngineUnavailableError, InvalidRequestError
from gateway.process_guard import ProcessGuard
from gateway.settings import BaseModelSpec, Settings

log = logging.getLogger(__name__)

_UNSUPPORTED_EXIT = 3  # tuner.gguf_checkpoint.UNSUPPORTED (not imported: it is the tuner's)
_DERIVE_SECONDS_GUESS = 90
# (gguf, out dir, log file) -> (exit status, last line of its output)
Derive = Callable[[Path, Path, Path], Awaitable[tuple[int, str]]]


def refuse_untrainable(catalog: ModelCatalog, model: str) -> None:
    """Raise the answer for a fine-tuning request on a GGUF-only base that is not
    trainable (yet); do nothing for any other model."""
    if model not in catalog:
        return
    state = catalog.resolve(model).extra.get("fine_tuning")
    if not isinstance(state, dict) or state.get("status") == "ready":
        return
    if state.get("status") == "preparing":
        raise EngineUnavailableError(state["message"], retry_after_s=_DERIVE_SECONDS_GUESS)
    raise InvalidRequestError(state["message"], param="model", code="model_not_trainable")


class GgufOnlyBases:
    def __init__(
        self,
        settings: Settings,
        guard: ProcessGuard,
        catalog: ModelCatalog,
        engine: LlamaCppEngine | None,
        base_dirs: dict[str, Path],
        derive: Derive | None = None,
    ) -> None:
        self._settings = settings
        self._guard = guard
        self._catalog = catalog
        self._engine = engine
        self._base_dirs = base_dirs  # shared with the tuner side: trainable once added
        self._derive = derive or self._derive_in_subprocess
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, specs: list[BaseModelSpec]) -> None:
        for spec in specs:
            if spec.gguf is None or spec.hf_dir is not None or self._engine is None:
                continue
            entry = self._engine.gguf_base_of(spec.id)
            if entry is None:
                continue
            out = self._settings.models_dir / spec.id
            if checkpoint_is_complete(out):
                self._ready(spec.id, entry, out)
                continue
            entry.extra["fine_tuning"] = {
                "status": "preparing",
                "message": f"'{spec.id}' was given as a GGUF only: its HF checkpoint is being "
                "derived for training (once, a minute or more); retry shortly.",
            }
            task = asyncio.create_task(self._prepare(spec, entry, out), name=f"derive-{spec.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait(self) -> None:
        """Until every derivation started has ended (tests, benchmarks)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _prepare(self, spec: BaseModelSpec, entry: ModelEntry, out: Path) -> None:
        assert spec.gguf is not None
        log_path = self._settings.data_root / "logs" / f"derive-{spec.id}.log"
        log.info("deriving the HF checkpoint of the GGUF-only base %s (once)", spec.id)
        status, last_line = await self._derive(spec.gguf, out, log_path)
        if status == 0 and checkpoint_is_complete(out):
            self._ready(spec.id, entry, out)
            log.info("%s can be fine-tuned now", spec.id)
            return
        message = (
            last_line
            if status == _UNSUPPORTED_EXIT
            else f"Deriving an HF checkpoint of '{spec.id}' from its GGUF failed; it is "
            "served but cannot be fine-tuned here."
        )
        log.error("%s: %s (log: %s)", spec.id, message, log_path)
        entry.extra["fine_tuning"] = {"status": "unsupported", "message": message}

    def _ready(self, base_id: str, entry: ModelEntry, out: Path) -> None:
        self._base_dirs[base_id] = out
        assert self._engine is not None
        self._engine.add_base(entry, base_id, out)  # its adapters convert against it
        entry.extra["fine_tuning"] = {"status": "ready", "checkpoint": "dequantised from GGUF"}

    async def _derive_in_subprocess(self, gguf: Path, out: Path, log_path: Path) -> tuple[int, str]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tuner.gguf_checkpoint", "--gguf", str(gguf)]
        with log_path.open("wb") as log_file:
            process = await self._guard.spawn(
                [*argv, "--out", str(out)],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                status = await process.wait()
            except asyncio.CancelledError:  # the gateway stops: so does the derivation
                signal_group(process.pid, signal.SIGKILL)
                raise
            finally:
                self._guard.forget(process.pid)
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line]
        return status, lines[-1] if lines else ""
