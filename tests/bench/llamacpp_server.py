"""GGUF models on llama-server: decode speed, concurrency, and what the build costs.

Side by side in one run, on one gateway that serves both engines:
- a merged q8_0 model: decode tokens/s through the gateway vs llama-cpp-python in process,
  and the fraction of the memory-bandwidth roofline that reaches;
- aggregate tokens/s at 1, 4 and 8 concurrent streams on the GGUF base, through the
  gateway next to llama-server called directly, and the same table for the vLLM base;
- the seconds `make setup` spent building llama-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.engines.llamacpp import DEFAULT_SERVER_BIN
from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.load import lean_stream
from tests.bench.suites import BASE_CONFIG, CHAT_PATH, STORY, Row, _register, running_gateway
from tests.support.adapter_factory import write_adapter

CONCURRENCY = (1, 4, 8)
ANSWER_TOKENS = 96
DECODE_TOKENS = 128  # the merged model's single-stream answers
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


async def llamacpp_server(quick: bool) -> list[Row]:
    rounds, pairs = (3, 2) if quick else (8, 6)
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-llamacpp-") as imports:
        folder = write_adapter(
            Path(imports) / "a", rank=8, base_config=BASE_CONFIG, seed=1, modules=LORA_MODULES
        )
        with running_gateway("--adapter-import-dirs", json.dumps([imports])) as gateway:
            rows = await _merged_decode(gateway, folder, rounds)
            gguf_id = f"{EMBEDDED_MODEL_ID}-gguf"
            # The base's llama-server may have stopped as least recently used: ask it first.
            await lean_stream(gateway.api_url + "/chat/completions", None, _body(gguf_id))
            for family, model in (("llama.cpp", gguf_id), ("vllm", EMBEDDED_MODEL_ID)):
                direct = gateway.engine_serving(model)["url"]
                rows += await _concurrency_table(family, gateway.api_url, direct, model, pairs)
    return rows + [_build_row()]


def _body(model: str) -> dict:
    return {
        "model": model,
        "messages": STORY,
        "max_tokens": ANSWER_TOKENS,
        "temperature": 0,
        "ignore_eos": True,  # every answer is ANSWER_TOKENS long, on both engines
        "stream_options": {"include_usage": True},
    }


async def _merged_decode(gateway, adapter_folder: Path, rounds: int) -> list[Row]:
    adapter = _register(gateway, adapter_folder, "benchmerge")
    with gateway.http() as http:
        started = time.perf_counter()
        state = http.post(f"/v1/adapters/{adapter}/merge", json={"quantization": "q8_0"}).json()
        while state["status"] in ("queued", "running"):
            await asyncio.sleep(0.5)
            state = http.get(f"/v1/merges/{state['id']}").json()
        assert state["status"] == "succeeded", state
        merge_s = time.perf_counter() - started
    gguf = gateway.data_root / "merged" / f"{state['model']}.gguf"
    chat = gateway.api_url + "/chat/completions"
    long = {
        "model": state["model"],
        "messages": STORY,
        "max_tokens": DECODE_TOKENS,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    # The same file, loaded in this process too; the three take turns, one answer each,
    # so that the host's drift falls on all three alike.
    local = await asyncio.to_thread(_load_in_process, gguf)
    first = await lean_stream(chat, None, long)
    engine_url = gateway.engine_serving(state["model"])["url"]
    through, server, in_process = [], [], []
    for _ in range(rounds):
        through.append((await lean_stream(chat, None, long)).tokens_per_s)
        server.append((await lean_stream(engine_url + CHAT_PATH, None, long)).tokens_per_s)
        in_process.append(await asyncio.to_thread(_in_process_decode_tokens_per_s, local))
    del local
    gateway_rate = statistics.median(through)
    server_rate = statistics.median(server)
    local_rate = statistics.median(in_process)
    gguf_bytes = gguf.stat().st_size
    bandwidth = _memory_bandwidth_gb_s()
    roofline = gguf_bytes * gateway_rate / (bandwidth * 1e9)
    suite = "merged gguf"
    return [
        Row(
            suite,
            "decode tokens/s",
            local_rate,
            gateway_rate,
            "tok/s",
            "≥ 0.95× llama-cpp-python",
            gateway_rate / local_rate >= 0.95,
        ),
        Row(suite, "decode tok/s, llama-server", local_rate, server_rate, "tok/s"),
        Row(
            suite,
            "decode tok/s, gateway",
            server_rate,
            gateway_rate,
            "tok/s",
            "≥ 0.98× llama-server",
            gateway_rate / server_rate >= 0.98,
        ),
        Row(
            suite,
            "roofline fraction",
            1.0,
            roofline,
            "×",
            f"{gguf_bytes / 1e6:.0f} MB at {bandwidth:.1f} GB/s",
        ),
        Row(suite, "merge, then first token", merge_s, merge_s + first.ttft_ms / 1000, "s"),
    ]


async def _concurrency_table(
    family: str, gateway_url: str, engine_url: str, model: str, pairs: int
) -> list[Row]:
    """Aggregate tokens/s of ``c`` clients streaming at once, direct and gateway.

    Every level and side is measured ``pairs`` times, in turns (c=1 direct, c=1 gateway,
    c=4 direct, ...), and the medians are compared: on a shared 2-core host the speed swings
    by 10-20% from one window to the next, and taking turns spreads that drift over every
    cell alike."""
    body = _body(model)
    sides = {"direct": engine_url + CHAT_PATH, "gateway": gateway_url + "/chat/completions"}
    samples: dict[tuple[int, str], list[float]] = {}
    for _ in range(pairs):
        for concurrency in CONCURRENCY:
            for side, url in sides.items():
                rate = await _aggregate_tokens_per_s(url, body, concurrency)
                samples.setdefault((concurrency, side), []).append(rate)
    measured = {
        c: {side: statistics.median(samples[c, side]) for side in sides} for c in CONCURRENCY
    }
    rows = [
        Row(
            f"{family} concurrency",
            f"aggregate tok/s, c={c}",
            rates["direct"],
            rates["gateway"],
            "tok/s",
            "≥ 0.95× direct",
            rates["gateway"] / rates["direct"] >= 0.95,
        )
        for c, rates in measured.items()
    ]
    goal = {"llama.cpp": 1.5}.get(family)
    for side in sides:
        one, most = measured[1][side], measured[CONCURRENCY[-1]][side]
        wanted = goal if side == "gateway" else None
        rows.append(
            Row(
                f"{family} concurrency",
                f"{side} c={CONCURRENCY[-1]} vs c=1",
                one,
                most,
                "tok/s",
                f"≥ {wanted}× c=1" if wanted else "",
                most / one >= wanted if wanted else None,
            )
        )
    return rows


async def _aggregate_tokens_per_s(url: str, body: dict, concurrency: int) -> float:
    """``concurrency`` clients stream one answer each, all at once: the same work on both
    sides, and short windows, so that the turns are fine-grained."""
    warm_up = {**body, "max_tokens": 1}  # the prompt in each slot's cache
    await asyncio.gather(*(lean_stream(url, None, warm_up) for _ in range(concurrency)))
    started = time.perf_counter()
    answers = await asyncio.gather(*(lean_stream(url, None, body) for _ in range(concurrency)))
    return sum(a.completion_tokens for a in answers) / (time.perf_counter() - started)


@contextlib.contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    """Load weights as llama-server is built to: without ggml's AMX buffers, which crash
    on some Sapphire Rapids machines (llama.cpp issue 20824). q8_0 has no other extra
    buffer type on x86, so its kernels are the same either way."""
    import llama_cpp.llama_cpp as bindings

    default = bindings.llama_model_default_params

    def params():  # a ctypes struct
        value = default()
        value.use_extra_bufts = False
        return value

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = default


def _load_in_process(gguf: Path):
    from llama_cpp import Llama

    # The threads the gateway gives its engines (TUNEGATE_LLAMACPP_THREADS reaches both).
    threads = int(os.environ.get("TUNEGATE_LLAMACPP_THREADS") or os.cpu_count() or 1)
    with _without_extra_buffer_types():
        return Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, verbose=False)


def _in_process_decode_tokens_per_s(model) -> float:
    """One streamed answer in this process: tokens/s from the first token to the last."""
    first = last = 0.0
    tokens = 0
    for chunk in model.create_chat_completion(
        messages=STORY, max_tokens=DECODE_TOKENS, temperature=0, stream=True
    ):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    return (tokens - 1) / (last - first)


def _memory_bandwidth_gb_s() -> float:
    """Bytes read and written per second by a large array copy: the roofline's ceiling."""
    import numpy as np

    source = np.ones(64 * 2**20, dtype=np.float64)  # 512 MiB
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


def _build_row() -> Row:
    """What `make setup` recorded when it built llama-server on a fresh build dir."""
    recorded = DEFAULT_SERVER_BIN.parents[1] / "build-seconds"
    try:
        seconds = float(recorded.read_text())
    except (OSError, ValueError):
        print(f"no build time recorded at {recorded}", file=sys.stderr)
        seconds = float("nan")
    return Row(
        "llama-server build",
        "added set-up time",
        seconds,
        seconds,
        "s",
        f"make setup, fresh build dir, {os.cpu_count()} cores",
    )
