"""LoRA adapters on llama-server: their ids, their GGUF files, and the ``lora`` field.

llama-server loads a fixed list of adapters at start (``--lora a.gguf --lora
b.gguf --lora-init-without-apply``) and each request picks its weights with
``"lora": [{"id": <index in that list>, "scale": <weight>}]``. A request without
the field gets whatever scales the server holds now, which is not "none" (seen:
the first adapter at scale 1 despite ``--lora-init-without-apply``), so every
request to a server with adapters carries the whole list: scale 1 for its
adapter, 0 for the others, all 0 for the base.

Ids: an adapter served on llama.cpp is ``<adapter id>:gguf`` when its base is also
served on vLLM (where the adapter keeps its own id), and the adapter id as it is
when vLLM is off. Merged models are ``<adapter id>:gguf-<quantization>``, so the
two never clash.

An adapter is converted to GGUF once, on its first use on llama.cpp, by
``python -m tuner.lora_gguf`` in a subprocess; the file is kept in the adapter's
registry folder (``adapter.gguf``) and goes with it when the adapter is deleted.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.engines.process import signal_group
from gateway.errors import AdapterLoadError
from gateway.process_guard import ProcessGuard

GGUF_ADAPTER_SUFFIX = ":gguf"
ADAPTER_GGUF_FILE = "adapter.gguf"
_PATHS = re.compile(r"(/[^\s'\"]+)+")


def gguf_adapter_id(adapter_id: str, vllm_serves_base: bool) -> str:
    """The id of an adapter on llama.cpp (see the module's docstring)."""
    return f"{adapter_id}{GGUF_ADAPTER_SUFFIX}" if vllm_serves_base else adapter_id


def gguf_alias(alias: str, vllm_serves_base: bool) -> str:
    """The short alias on llama.cpp: ``<suffix>-gguf`` beside vLLM, as the base's id."""
    if not alias:
        return ""
    return f"{alias}-gguf" if vllm_serves_base else alias


def lora_field(adapters: Sequence[str], chosen: str | None) -> bytes:
    """The ``"lora": [...]`` member selecting ``chosen`` (None: the base) among a
    server's ``adapters``; empty when the server has none."""
    if not adapters:
        return b""
    items = ",".join(
        f'{{"id":{index},"scale":{1.0 if name == chosen else 0.0}}}'
        for index, name in enumerate(adapters)
    )
    return f'"lora":[{items}]'.encode()


async def convert_adapter(
    guard: ProcessGuard, adapter_dir: Path, base_dir: Path, log_path: Path
) -> Path:
    """Convert once (``adapter.gguf`` beside the adapter's weights); returns the file."""
    out = adapter_dir / ADAPTER_GGUF_FILE
    if out.is_file():
        return out
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "tuner.lora_gguf",
        "--adapter",
        str(adapter_dir),
        "--base",
        str(base_dir),
        "--out",
        str(out),
    ]
    with log_path.open("wb") as log_file:
        process = await guard.spawn(
            argv,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            returncode = await process.wait()
        except asyncio.CancelledError:  # the adapter was deleted, or the gateway stops
            signal_group(process.pid, signal.SIGKILL)
            raise
        finally:
            guard.forget(process.pid)
    if returncode != 0 or not out.is_file():
        raise AdapterLoadError(
            f"Converting the adapter to GGUF for llama.cpp failed: {_last_line(log_path)}"
        )
    return out


def _last_line(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line]
    except OSError:
        lines = []
    text = lines[-1] if lines else "no output"
    return _PATHS.sub("<path>", text.removeprefix("conversion failed: "))[:300]
