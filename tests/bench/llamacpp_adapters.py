"""LoRA adapters on llama-server, side by side in one run, on one gateway with both engines.

- adapter decode vs base decode on llama.cpp (one stream; goal ≥ 0.9×);
- 8 concurrent streams over 4 adapters vs 8 on one adapter (llama-server batches only
  requests with the same adapter set together; reported);
- the same adapter on llama.cpp vs on vLLM (one stream; reported);
- a new adapter's first answer on llama.cpp (conversion + a new llama-server);
- with vLLM off (what `make serve ENGINE=llamacpp` runs): gateway start to the first
  answer, and what a fresh machine adds before that (the build, the checkpoint).

The adapters are synthetic (random LoRA weights of the real shape, rank 8, every
linear module), so no training is part of any figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.engines.llamacpp import DEFAULT_SERVER_BIN
from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.load import lean_stream
from tests.bench.suites import BASE_CONFIG, STORY, Row, _register, running_gateway
from tests.support.adapter_factory import write_adapter
from tests.support.gateway_process import start_gateway

SUITE = "llama.cpp adapters"
GGUF_BASE = f"{EMBEDDED_MODEL_ID}-gguf"
ANSWER_TOKENS = 96
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _body(model: str, tokens: int = ANSWER_TOKENS) -> dict:
    return {
        "model": model,
        "messages": STORY,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,  # every answer is the same length, with or without an adapter
        "stream_options": {"include_usage": True},
    }


async def llamacpp_adapters(quick: bool) -> list[Row]:
    rounds = 3 if quick else 8
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-lora-") as imports:
        folders = [
            write_adapter(
                Path(imports) / f"a{i}",
                rank=8,
                base_config=BASE_CONFIG,
                seed=i + 1,
                modules=LORA_MODULES,
            )
            for i in range(4)
        ]
        with running_gateway("--adapter-import-dirs", json.dumps([imports])) as gateway:
            ids = [_register(gateway, folder, f"bench{i}") for i, folder in enumerate(folders)]
            chat = gateway.api_url + "/chat/completions"
            rows = [await _first_answer(chat, f"{ids[0]}:gguf")]
            for adapter in ids[1:]:  # every adapter loaded before anything is timed
                await lean_stream(chat, None, _body(f"{adapter}:gguf", 4))
            rows += await _decode(chat, ids[0], rounds)
            rows.append(await _mixed(chat, ids, rounds))
    return rows + await _llamacpp_only_start()


async def _first_answer(chat: str, model: str) -> Row:
    started = time.perf_counter()
    await lean_stream(chat, None, _body(model, 4))
    seconds = time.perf_counter() - started
    return Row(SUITE, "new adapter, first answer", seconds, seconds, "s", "convert + new server")


async def _decode(chat: str, adapter: str, rounds: int) -> list[Row]:
    """One stream at a time, in turns, so that the host's drift falls on all alike."""
    rates: dict[str, list[float]] = {"base": [], "llama.cpp": [], "vllm": []}
    models = {"base": GGUF_BASE, "llama.cpp": f"{adapter}:gguf", "vllm": adapter}
    for model in models.values():  # warm: vLLM loads the adapter on first use
        await lean_stream(chat, None, _body(model, 8))
    for _ in range(rounds):
        for name, model in models.items():
            rates[name].append((await lean_stream(chat, None, _body(model))).tokens_per_s)
    base, on_llamacpp, on_vllm = (statistics.median(rates[n]) for n in models)
    return [
        Row(
            SUITE,
            "decode tok/s, adapter vs base",
            base,
            on_llamacpp,
            "tok/s",
            "≥ 0.9× base",
            on_llamacpp / base >= 0.9,
        ),
        Row(SUITE, "decode tok/s, vLLM vs llama.cpp", on_vllm, on_llamacpp, "tok/s", "report"),
    ]


async def _mixed(chat: str, ids: list[str], rounds: int) -> Row:
    """Aggregate tokens/s of 8 concurrent streams: all on one adapter, then over four."""

    async def eight(models: list[str]) -> float:
        started = time.perf_counter()
        stats = await asyncio.gather(
            *(lean_stream(chat, None, _body(models[i % len(models)])) for i in range(8))
        )
        return sum(s.completion_tokens for s in stats) / (time.perf_counter() - started)

    one, four = [], []
    twins = [f"{adapter}:gguf" for adapter in ids]
    for _ in range(max(2, rounds // 2)):
        one.append(await eight(twins[:1]))
        four.append(await eight(twins))
    return Row(
        SUITE,
        "8 streams, 1 vs 4 adapters",
        statistics.median(one),
        statistics.median(four),
        "tok/s",
        "report (not batched together)",
    )


async def _llamacpp_only_start() -> list[Row]:
    """vLLM off, a new data root with the prepared checkpoint (as `make serve` leaves it):
    the gateway's start to its first answer; then what a fresh machine adds."""
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-cpp-only-") as tmp:
        started = time.perf_counter()
        gateway = start_gateway(Path(tmp), "--no-vllm-enabled")
        try:
            gateway.wait_ready(300)
            await lean_stream(
                gateway.api_url + "/chat/completions", None, _body(EMBEDDED_MODEL_ID, 8)
            )
            seconds = time.perf_counter() - started
        finally:
            gateway.stop()
    build = _recorded_build_seconds()
    rows = [
        Row("llama.cpp only", "gateway start → first answer", seconds, seconds, "s", "vLLM off"),
        Row(
            "llama.cpp only",
            "+ llama-server build (fresh)",
            seconds,
            seconds + build,
            "s",
            f"≤ 300 s on {os.cpu_count()} cores",
            seconds + build <= 300,
        ),
    ]
    return rows


def _recorded_build_seconds() -> float:
    recorded = DEFAULT_SERVER_BIN.parents[1] / "build-seconds"
    try:
        return float(recorded.read_text())
    except (OSError, ValueError):
        print(f"no llama-server build time recorded at {recorded}", file=sys.stderr)
        return float("nan")
