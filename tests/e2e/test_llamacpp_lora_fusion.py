"""llama-server's fused LoRA path (patches/llama.cpp) answers as llama.cpp's own nodes do.

On a decode step the patched CPU backend computes an adapted product and its adapter
as one node. ``GGML_CPU_DISABLE_FUSION=1`` runs the same binary on llama.cpp's own
nodes (a product, then four per adapter). Both servers get the embedded model and
the same two adapters; their greedy answers and log-probabilities are compared: one
adapter, two at once, and two sequences decoded in one batch.

The embedded model in f32 (its product reads x as it is) and in f16 (x is packed into
the product's type first, by each thread a part, as ggml's product does), not the
package's Q4_1: a quantised base quantises each layer's input to 8 bits in blocks, so a
difference in the last bit of one input (the two ways add in different orders) can
move a rounding step and grow from layer to layer; on the Q4_1 base the log-probabilities
of the two ways drift apart by up to 0.13 within 24 tokens, whichever is right. The
Q4_1 base with a trained adapter is test_llamacpp_adapters.py's parity test.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.adapter_factory import write_adapter
from tests.support.llama_server import llama_server
from tests.support.logprobs import Steps, shared_tokens, steps_of
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


@pytest.fixture(scope="module", params=["f32", "f16"])
def servers(request) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory(prefix="tunegate-lora-fusion-") as scratch:
        base = convert(BASE_DIR, Path(scratch) / f"base-{request.param}.gguf", request.param)
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
            llama_server(base, adapters, fused=True, parallel=2) as fused,
            llama_server(base, adapters, fused=False, parallel=2) as unfused,
        ):
            yield {"fused": fused, "unfused": unfused}


def _answer(url: str, prompt: str, scales: tuple[float, float]) -> Steps:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
        "lora": [{"id": i, "scale": s} for i, s in enumerate(scales)],
    }
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=300, trust_env=False)
    reply.raise_for_status()
    return steps_of(reply.json()["choices"][0]["logprobs"]["content"])


def _answers(url: str, scales: tuple[float, float]) -> list[Steps]:
    """Both prompts at once: with two slots, they are decoded in one batch."""
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(lambda prompt: _answer(url, prompt, scales), PROMPTS))


@pytest.mark.parametrize("scales", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)], ids=str)
def test_fused_adapters_answer_as_llamacpps_own_nodes(servers, scales):
    fused, unfused = _answers(servers["fused"], scales), _answers(servers["unfused"], scales)
    shared = [shared_tokens(f, u, LOGPROB_TOLERANCE) for f, u in zip(fused, unfused, strict=True)]
    assert sum(shared) >= TOKENS, shared  # most of the two answers, compared token by token
    # the adapters change what is said, so the comparison above saw them applied
    base = _answers(servers["fused"], (0.0, 0.0))
    assert [[t for t, _ in a] for a in fused] != [[t for t, _ in a] for a in base]
