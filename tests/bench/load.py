"""A closed-loop load generator and the statistics the benchmarks report."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx

from gateway.stream_client import open_stream


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p99_ms: float
    count: int

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        ordered = sorted(seconds)
        p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
        return cls(statistics.median(ordered) * 1000, ordered[p99_index] * 1000, len(ordered))


@dataclass(frozen=True)
class StreamStats:
    ttft_ms: float
    tokens_per_s: float
    chunks: int


def new_client(concurrency: int = 16) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=120, limits=limits, trust_env=False)


async def timed_post(client: httpx.AsyncClient, url: str, body: dict, headers: dict) -> float:
    started = time.perf_counter()
    response = await client.post(url, json=body, headers=headers)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


async def interleaved_latency(
    targets: dict[str, tuple[str, dict]], body: dict, rounds: int, warmup: int = 20
) -> dict[str, LatencyStats]:
    """One request to each target per round, alternating, so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    async with new_client(2) as client:
        for round_no in range(warmup + rounds):
            for name, (url, headers) in targets.items():
                elapsed = await timed_post(client, url, body, headers)
                if round_no >= warmup:
                    samples[name].append(elapsed)
    return {name: LatencyStats.of(values) for name, values in samples.items()}


async def closed_loop_rps(
    url: str, headers: dict, body: dict, concurrency: int, duration_s: float
) -> float:
    """Requests per second with ``concurrency`` clients each sending back to back."""
    done = 0
    stop_at = 0.0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await timed_post(client, url, body, headers)
            done += 1

    async with new_client(concurrency) as client:
        for _ in range(concurrency * 5):  # warm the connection pool
            await timed_post(client, url, body, headers)
        started = time.perf_counter()
        stop_at = started + duration_s
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


async def stream_once(
    client: httpx.AsyncClient, url: str, headers: dict, body: dict
) -> StreamStats:
    started = time.perf_counter()
    first = last = 0.0
    tokens = chunks = 0
    async with client.stream(
        "POST", url, json={**body, "stream": True}, headers=headers
    ) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            event = json.loads(line[6:])
            if any(
                choice.get("delta", {}).get("content") or choice.get("text")
                for choice in event.get("choices", [])
            ):
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
    span = last - first
    return StreamStats((first - started) * 1000, (tokens - 1) / span if span > 0 else 0.0, chunks)


async def interleaved_streams(
    targets: dict[str, tuple[str, dict]], body: dict, rounds: int
) -> dict[str, StreamStats]:
    results: dict[str, list[StreamStats]] = {name: [] for name in targets}
    async with new_client(2) as client:
        for url, headers in targets.values():  # warm-up
            await stream_once(client, url, headers, body)
        for _ in range(rounds):
            for name, (url, headers) in targets.items():
                results[name].append(await stream_once(client, url, headers, body))
    return {
        name: StreamStats(
            statistics.median(s.ttft_ms for s in runs),
            statistics.median(s.tokens_per_s for s in runs),
            round(statistics.median(s.chunks for s in runs)),
        )
        for name, runs in results.items()
    }


@dataclass(frozen=True)
class LeanStreamStats:
    ttft_ms: float
    tokens_per_s: float
    completion_tokens: int


# Tokens are the events with text in them; the first event (the role) has content null.
_TEXT = b'"content":"'
_NO_TEXT = b'"content":""'


async def lean_stream(url: str, headers: dict | None, body: dict) -> LeanStreamStats:
    """One streamed answer, read as cheaply as a client can: on the gateway's own
    connection-per-stream client (C-parsed), text events counted in the raw bytes, JSON
    parsed only for the usage at the end. The load generator shares the cores with the
    engine and the gateway; its CPU per token would otherwise be in every figure."""
    started = time.perf_counter()
    answer = await open_stream(
        url,
        json.dumps({**body, "stream": True}).encode(),
        {"content-type": "application/json", **(headers or {})},
        connect_timeout_s=10,
        read_timeout_s=300,
    )
    first = last = 0.0
    tokens = 0
    carry = b""
    last_event = b""
    try:
        assert answer.status_code == 200, await answer.aread()
        async for piece in answer.aiter_raw():
            now = time.perf_counter()
            *events, carry = (carry + piece).split(b"\n\n")
            for event in events:
                if _TEXT in event and _NO_TEXT not in event:
                    first = first or now
                    last = now
                    tokens += 1
                if event.startswith(b"data: {"):
                    last_event = event
    finally:
        await answer.aclose()
    usage = json.loads(last_event[6:]).get("usage") or {}
    span = last - first
    return LeanStreamStats(
        (first - started) * 1000,
        (tokens - 1) / span if span > 0 else 0.0,
        int(usage.get("completion_tokens", tokens)),
    )
