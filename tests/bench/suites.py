"""Benchmark suites. Every figure compares gateway and direct, side by side in one run."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.engines.process import free_port
from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.load import (
    closed_loop_rps,
    interleaved_latency,
    interleaved_streams,
    new_client,
    stream_once,
)
from tests.support.adapter_factory import write_adapter
from tests.support.gateway_process import REPO, GatewayProcess, start_gateway

CHAT_PATH = "/v1/chat/completions"
BASE_CONFIG = REPO / "var" / "models" / EMBEDDED_MODEL_ID / "config.json"
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@dataclass(frozen=True)
class Row:
    suite: str
    metric: str
    direct: float
    gateway: float
    unit: str
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float:
        return self.gateway / self.direct if self.direct else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "ratio": round(self.ratio, 3)}


@contextmanager
def fake_upstream(latency_ms: float = 0.0, chunks: int = 16) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.bench.fake_upstream",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--chunks",
            str(chunks),
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/health", 30)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def running_gateway(*flags: str, timeout_s: float = 900) -> Iterator[GatewayProcess]:
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        gateway = start_gateway(Path(tmp), *flags)
        try:
            gateway.wait_ready(timeout_s)
            yield gateway
        finally:
            gateway.stop()


def _wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def _chunk_row(suite: str, streams: dict) -> Row:
    """Pass-through check: the gateway relays exactly the engine's SSE events."""
    direct, through = streams["direct"].chunks, streams["gateway"].chunks
    return Row(suite, "SSE chunks", direct, through, "chunks", "equal", direct == through)


async def gateway_overhead(rounds: int, duration_s: float) -> list[Row]:
    """The gateway in front of an instant upstream: what the gateway itself costs."""
    rows: list[Row] = []
    body = {"model": EMBEDDED_MODEL_ID, "messages": PROMPT, "max_tokens": 1}
    with (
        fake_upstream() as upstream,
        running_gateway("--vllm-url", upstream, "--no-llamacpp-enabled") as gateway,
    ):
        targets = {
            "direct": (upstream + CHAT_PATH, {}),
            "gateway": (gateway.api_url + "/chat/completions", {}),
        }
        latency = await interleaved_latency(targets, body, rounds)
        added_p50 = latency["gateway"].p50_ms - latency["direct"].p50_ms
        added_p99 = latency["gateway"].p99_ms - latency["direct"].p99_ms
        rows += [
            Row(
                "instant upstream",
                "latency p50",
                latency["direct"].p50_ms,
                latency["gateway"].p50_ms,
                "ms",
                f"added ≤ 1 ms (added {added_p50:.2f})",
                added_p50 <= 1.0,
            ),
            Row(
                "instant upstream",
                "latency p99",
                latency["direct"].p99_ms,
                latency["gateway"].p99_ms,
                "ms",
                f"added ≤ 5 ms (added {added_p99:.2f})",
                added_p99 <= 5.0,
            ),
        ]
        for concurrency in (1, 4):
            direct = await closed_loop_rps(*targets["direct"], body, concurrency, duration_s)
            through = await closed_loop_rps(*targets["gateway"], body, concurrency, duration_s)
            rows.append(
                Row("instant upstream", f"requests/s c={concurrency}", direct, through, "rps")
            )
        streams = await interleaved_streams(targets, body, rounds=max(20, rounds // 10))
        rows += [
            Row(
                "instant upstream",
                "16-chunk stream TTFT",
                streams["direct"].ttft_ms,
                streams["gateway"].ttft_ms,
                "ms",
            ),
            _chunk_row("instant upstream", streams),
        ]
    goals = {1: 0.9, 4: 0.8, 16: 0.6}
    with (
        fake_upstream(latency_ms=20) as upstream,
        running_gateway("--vllm-url", upstream, "--no-llamacpp-enabled") as gateway,
    ):
        for concurrency, goal in goals.items():
            direct = await closed_loop_rps(upstream + CHAT_PATH, {}, body, concurrency, duration_s)
            through = await closed_loop_rps(
                gateway.api_url + "/chat/completions", {}, body, concurrency, duration_s
            )
            rows.append(
                Row(
                    "20 ms upstream",
                    f"requests/s c={concurrency}",
                    direct,
                    through,
                    "rps",
                    f"≥ {goal}× direct",
                    through / direct >= goal,
                )
            )
    return rows


async def real_engines(rounds: int) -> list[Row]:
    """The gateway in front of the real vLLM and llama.cpp engines it runs."""
    rows: list[Row] = []
    with running_gateway() as gateway:
        engines = {e["engine"]: e["url"] for e in gateway.engines()}
        models = {"vllm": EMBEDDED_MODEL_ID, "llama.cpp": f"{EMBEDDED_MODEL_ID}-gguf"}
        for family, model in models.items():
            # llama-server closes the connection after each stream without saying so;
            # asking for the close (as the gateway does) keeps the load from reusing it.
            direct_headers = {"Connection": "close"} if family == "llama.cpp" else {}
            targets = {
                "direct": (engines[family] + CHAT_PATH, direct_headers),
                "gateway": (gateway.api_url + "/chat/completions", {}),
            }
            short = {"model": model, "messages": PROMPT, "max_tokens": 4, "temperature": 0}
            latency = await interleaved_latency(targets, short, rounds, warmup=3)
            added = latency["gateway"].p50_ms - latency["direct"].p50_ms
            rows.append(
                Row(
                    family,
                    "latency p50, 4 tokens",
                    latency["direct"].p50_ms,
                    latency["gateway"].p50_ms,
                    "ms",
                    f"added {added:+.2f} ms",
                )
            )
            rows.append(
                Row(
                    family,
                    "latency p99, 4 tokens",
                    latency["direct"].p99_ms,
                    latency["gateway"].p99_ms,
                    "ms",
                )
            )
            long = {"model": model, "messages": STORY, "max_tokens": 64, "temperature": 0}
            streams = await interleaved_streams(targets, long, rounds=max(3, rounds // 5))
            ratio = streams["gateway"].tokens_per_s / streams["direct"].tokens_per_s
            rows += [
                Row(
                    family,
                    "stream tokens/s",
                    streams["direct"].tokens_per_s,
                    streams["gateway"].tokens_per_s,
                    "tok/s",
                    "≥ 0.98× direct",
                    ratio >= 0.98,
                ),
                Row(
                    family,
                    "stream TTFT",
                    streams["direct"].ttft_ms,
                    streams["gateway"].ttft_ms,
                    "ms",
                ),
                _chunk_row(family, streams),
            ]
    return rows


async def adapters(rounds: int, duration_s: float) -> list[Row]:
    """Cold vs warm first request to an adapter; several adapters mixed vs one."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-adapters-") as imports:
        count = max(3, rounds // 3)
        folders = [
            write_adapter(
                Path(imports) / f"a{i}",
                rank=8,
                base_config=BASE_CONFIG,
                seed=i,
                modules=(
                    "q_proj",
                    "k_proj",
                    "v_proj",
                    "o_proj",
                    "gate_proj",
                    "up_proj",
                    "down_proj",
                ),
            )
            for i in range(count + 4)
        ]
        with running_gateway("--adapter-import-dirs", json.dumps([imports])) as gateway:
            ids = [_register(gateway, folder, f"bench{i}") for i, folder in enumerate(folders)]
            chat = gateway.api_url + "/chat/completions"
            body = {"messages": PROMPT, "max_tokens": 4, "temperature": 0}
            async with new_client(8) as client:
                await stream_once(client, chat, {}, {**body, "model": EMBEDDED_MODEL_ID})
                cold, warm, base = [], [], []
                for adapter_id in ids[:count]:
                    first = await stream_once(client, chat, {}, {**body, "model": adapter_id})
                    again = await stream_once(client, chat, {}, {**body, "model": adapter_id})
                    plain = await stream_once(
                        client, chat, {}, {**body, "model": EMBEDDED_MODEL_ID}
                    )
                    cold.append(first.ttft_ms)
                    warm.append(again.ttft_ms)
                    base.append(plain.ttft_ms)
            cold_ms, warm_ms = statistics.median(cold), statistics.median(warm)
            rows += [
                Row(
                    "adapters",
                    "TTFT warm vs cold",
                    warm_ms,
                    cold_ms,
                    "ms",
                    f"cold ≤ warm + 150 ms (+{cold_ms - warm_ms:.0f})",
                    cold_ms <= warm_ms + 150,
                ),
                Row("adapters", "TTFT base vs warm", statistics.median(base), warm_ms, "ms"),
            ]
            mixed_ids = ids[count : count + 4]
            long = {"messages": STORY, "max_tokens": 16, "temperature": 0}
            one = await _tokens_per_s(chat, [mixed_ids[0]], long, duration_s)
            mixed = await _tokens_per_s(chat, mixed_ids, long, duration_s)
            rows.append(Row("adapters", "tokens/s 1 vs 4 mixed, c=8", one, mixed, "tok/s"))
    return rows


def _register(gateway: GatewayProcess, folder: Path, suffix: str) -> str:
    with gateway.http() as http:
        response = http.post(
            "/v1/adapters", json={"path": str(folder), "base": EMBEDDED_MODEL_ID, "suffix": suffix}
        )
        response.raise_for_status()
        return response.json()["id"]


async def _tokens_per_s(url: str, models: list[str], body: dict, duration_s: float) -> float:
    """Completion tokens/s with 8 clients, each cycling through ``models``."""
    tokens = 0
    stop_at = time.perf_counter() + duration_s

    async def worker(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal tokens
        turn = offset
        while time.perf_counter() < stop_at:
            model = models[turn % len(models)]
            turn += 1
            response = await client.post(url, json={**body, "model": model})
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    async with new_client(8) as client:
        for model in models:  # warm: every adapter loaded
            (
                await client.post(url, json={**body, "model": model, "max_tokens": 1})
            ).raise_for_status()
        started = time.perf_counter()
        await asyncio.gather(*(worker(client, i) for i in range(8)))
        return tokens / (time.perf_counter() - started)


def _varied_dataset(path: Path, count: int) -> None:
    """Chat examples whose answers run from a few words to a few hundred tokens, so that
    padding to the longest example in a batch costs what it costs on real data."""
    words = "the ship sailed past the old lighthouse while the keeper wrote in his log".split()
    with path.open("w") as out:
        for i in range(count):
            length = 4 + (i * 37) % 150
            answer = " ".join(words[(i + j) % len(words)] for j in range(length))
            messages = [
                {"role": "user", "content": f"Tell me story number {i}."},
                {"role": "assistant", "content": answer.capitalize() + "."},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")


def write_job_spec(run_dir: Path, epochs: int, batch: int, lr: float, **method: object) -> None:
    """The ``job.json`` the gateway would write for the trainer: SmolLM2, a rank-8 LoRA on
    every linear layer, seed 0; ``method`` adds the method's own fields (DPO's)."""
    spec = {
        "base_dir": str(BASE_CONFIG.parent),
        "n_epochs": epochs,
        "batch_size": batch,
        "learning_rate": lr,
        "seed": 0,
        "max_length": 2048,
        "lora": {"rank": 8, "alpha": 16, "target_modules": "all-linear"},
        **method,
    }
    (run_dir / "job.json").write_text(json.dumps(spec))


async def tuner(quick: bool) -> list[Row]:
    """tunegate's trainer vs a plain TRL SFTTrainer script: same data, model, LoRA and settings."""
    epochs, batch, lr = 1, 8, 1e-3
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-tuner-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        data = run_dir / "train.jsonl"
        _varied_dataset(data, 32 if quick else 64)
        base = BASE_CONFIG.parent
        plain = json.loads(
            _last_line(
                await _python(
                    "-m",
                    "tests.bench.plain_trl",
                    str(base),
                    str(data),
                    str(epochs),
                    str(batch),
                    str(lr),
                )
            )
        )
        write_job_spec(run_dir, epochs, batch, lr)
        events = [
            json.loads(line)
            for line in (await _python("-m", "tuner.job", str(run_dir))).splitlines()
        ]
    result = next(e for e in events if e["type"] == "result")
    ours = [e["train_loss"] for e in events if e["type"] == "progress"]
    tokens = result["trained_tokens"]
    plain_rate, our_rate = tokens / plain["seconds"], tokens / result["train_seconds"]
    drift = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ours, plain["losses"], strict=True))
    return [
        Row(
            "tuner",
            "trained tokens/s",
            plain_rate,
            our_rate,
            "tok/s",
            "≥ 1.3× plain TRL",
            our_rate / plain_rate >= 1.3,
        ),
        Row(
            "tuner", "loss curve, max rel. diff", 1.0, 1.0 + drift, "×", "≤ 2% apart", drift <= 0.02
        ),
    ]


async def _python(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {process.returncode}")
    return out.decode()


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
