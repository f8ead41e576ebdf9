"""llama-server's fused LoRA path (patches/llama.cpp) answers as llama.cpp's own nodes do.

On a decode step the patched CPU backend computes an adapted product and its adapter
as one node. ``GGML_CPU_DISABLE_FUSION=1`` runs the same binary on llama.cpp's own
nodes (a product, then four per adapter). Both servers get the embedded model in f16
and the same two adapters; their greedy answers and log-probabilities are compared:
one adapter, two at once, and two sequences decoded in one batch.

The base is f16, not the package's Q4_1: a quantised base quantises each layer's input
to 8 bits in blocks, so a difference in the last bit of one input (the two ways add in
different orders) can move a rounding step and grow from layer to layer; on the Q4_1
base the log-probabilities of the two ways drift apart by up to 0.1 within 24 tokens,
on either way's own arithmetic.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gateway.engines.llamacpp import DEFAULT_SERVER_BIN
from gateway.engines.process import free_port
from tests.support.adapter_factory import write_adapter
from tests.support.training import BASE_DIR
from tuner.export import convert
from tuner.lora_gguf import convert_lora

pytestmark = pytest.mark.e2e

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = (
    "Write one sentence about a lighthouse keeper.",
    "Name three colours of the sea.",
)
TOKENS = 24
# The two ways add in different orders (and the fused one keeps B·t in f32), so their
# log-probabilities agree closely but not to the last bit.
LOGPROB_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="tunegate-lora-fusion-") as scratch:
        base = convert(BASE_DIR, Path(scratch) / "base-f32.gguf", "f32")
        adapters = []
        for seed, rank, modules in ((1, 8, ALL_LINEAR), (2, 16, ("q_proj", "v_proj"))):
            folder = write_adapter(
                Path(scratch) / f"adapter-{seed}",
                rank=rank,
                base_config=BASE_DIR / "config.json",
                seed=seed,
                modules=modules,
            )
            adapters.append(convert_lora(folder, BASE_DIR, Path(scratch) / f"{seed}.gguf"))
        with (
            _llama_server(base, adapters, Path(scratch) / "fused.log", fusion=True) as fused,
            _llama_server(base, adapters, Path(scratch) / "unfused.log", fusion=False) as unfused,
        ):
            yield {"fused": fused, "unfused": unfused}


@contextmanager
def _llama_server(base: Path, adapters: list[Path], log_path: Path, fusion: bool) -> Iterator[str]:
    port = free_port()
    argv = [str(DEFAULT_SERVER_BIN), "-m", str(base), "--port", str(port)]
    argv += ["-c", "2048", "-np", "2", "--threads", "2", "--no-webui"]
    for adapter in adapters:
        argv += ["--lora", str(adapter)]
    argv += ["--lora-init-without-apply"]
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_DISABLE_FUSION"}
    if not fusion:
        env["GGML_CPU_DISABLE_FUSION"] = "1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log_path)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"llama-server did not become healthy: {log_path}")


def _answer(url: str, prompt: str, scales: tuple[float, float]) -> tuple[str, list[float]]:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "logprobs": True,
        "lora": [{"id": i, "scale": s} for i, s in enumerate(scales)],
    }
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=300, trust_env=False)
    reply.raise_for_status()
    choice = reply.json()["choices"][0]
    return choice["message"]["content"], [t["logprob"] for t in choice["logprobs"]["content"]]


def _answers(url: str, scales: tuple[float, float]) -> list[tuple[str, list[float]]]:
    """Both prompts at once: with two slots, they are decoded in one batch."""
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(lambda prompt: _answer(url, prompt, scales), PROMPTS))


@pytest.mark.parametrize("scales", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)], ids=str)
def test_fused_adapters_answer_as_llamacpps_own_nodes(servers, scales):
    fused, unfused = _answers(servers["fused"], scales), _answers(servers["unfused"], scales)
    base = _answers(servers["fused"], (0.0, 0.0))
    for (text, logprobs), (expected_text, expected_logprobs) in zip(fused, unfused, strict=True):
        assert text == expected_text
        differences = [abs(a - b) for a, b in zip(logprobs, expected_logprobs, strict=True)]
        assert differences and max(differences) < LOGPROB_TOLERANCE
    # the adapters change what is said, so the comparison above saw them applied
    assert [text for text, _ in fused] != [text for text, _ in base]
