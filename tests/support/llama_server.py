"""llama-server started directly, not through the gateway, with LoRA adapters loaded and
chosen per request (``lora`` in the body): for the benchmark and the e2e test that
compare our fused LoRA path (patches/llama.cpp) with llama.cpp's own nodes, the same
binary run with ``GGML_CPU_DISABLE_FUSION=1``."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gateway.engines.llamacpp import DEFAULT_SERVER_BIN
from gateway.engines.process import free_port

FUSION_OFF = "GGML_CPU_DISABLE_FUSION"


@contextmanager
def llama_server(
    base: Path, adapters: list[Path], fused: bool = True, parallel: int | None = None
) -> Iterator[str]:
    """Its URL, once healthy; the adapters unapplied until a request chooses them."""
    port = free_port()
    threads = str(os.cpu_count() or 1)
    argv = [str(DEFAULT_SERVER_BIN), "-m", str(base), "--port", str(port), "--no-webui"]
    argv += ["--threads", threads, "--threads-batch", threads, "-c", "2048"]
    if parallel is not None:
        argv += ["-np", str(parallel)]
    for adapter in adapters:
        argv += ["--lora", str(adapter)]
    argv += ["--lora-init-without-apply"]
    env = {k: v for k, v in os.environ.items() if k != FUSION_OFF}
    if not fused:
        env[FUSION_OFF] = "1"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, process, log)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_healthy(url: str, process: subprocess.Popen, log) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"llama-server exited:\n{log.read().decode(errors='replace')[-3000:]}"
            )
        try:
            if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"llama-server at {url} did not become healthy")
