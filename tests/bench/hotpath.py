"""The router's hot path: the gateway's own CPU per request and per streamed chunk, beside
the wall time it adds, against a fake upstream that answers at once.

CPU is the gateway process's own (psutil: user + system), less what it spends idle
over the same time (its timers: measured once per process, over a few seconds). psutil
counts in 10 ms ticks here, so every window holds thousands of requests or chunks. The
load comes from the gateway's lean client (``UpstreamClient``), the cheapest client
there is here: the load generator shares the two cores with the gateway and the
upstream, and whatever it spends would be in every figure.

With ``--before TREE`` (a checkout of an earlier commit: ``git worktree add``), a
second gateway runs from that tree, and every figure is measured on both, window by
window in turns: *baseline* is then the earlier gateway.

    python -m tests.bench --suite hotpath [--quick] [--before /path/to/tree]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from gateway.engines.process import free_port
from gateway.settings import EMBEDDED_MODEL_ID
from gateway.stream_client import UpstreamClient, open_stream
from tests.bench.load import LatencyStats
from tests.bench.suites import Row
from tests.support.gateway_process import REPO, link_prepared_checkpoint

CHAT_PATH = "/v1/chat/completions"
PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
_HEADERS = {"content-type": "application/json"}
SHORT_STREAM, LONG_STREAM = 8, 136  # chunks: per-chunk CPU is the difference, per extra one


@dataclass
class Server:
    """A process under measurement: its URL for chat and its CPU time."""

    name: str
    chat_url: str
    process: psutil.Process
    idle_cpu_rate: float = 0.0  # CPU seconds per second that it spends doing nothing

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


@contextmanager
def _process(name: str, command: list[str], cwd: Path, port: int, env: dict) -> Iterator[Server]:
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/health", process, log, 120)
        yield Server(name, url + CHAT_PATH, psutil.Process(process.pid))
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_for(url: str, process: subprocess.Popen, log, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{url} exited:\n{log.read().decode(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def upstream(latency_ms: float, chunk_gap_ms: float = 0.0) -> Iterator[Server]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.bench.fake_upstream",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        "--chunk-gap-ms",
        str(chunk_gap_ms),
        "--chunks-per-token",
    ]
    return _process("upstream", command, REPO, port, dict(os.environ))


def tcp_relay(target: Server) -> Iterator[Server]:
    """A bare TCP relay (``tests.bench.tcp_relay``) in front of ``target``: the floor."""
    port = free_port()
    target_port = str(target.chat_url.split(":")[2].split("/")[0])
    command = [sys.executable, "-m", "tests.bench.tcp_relay", "--port", str(port)]
    command += ["--upstream-port", target_port]
    return _process("tcp relay", command, REPO, port, dict(os.environ))


@contextmanager
def gateway(name: str, tree: Path, upstream_url: str) -> Iterator[Server]:
    """``python -m gateway`` from ``tree`` (its own code first on the path), in front of
    ``upstream_url`` alone; access log off, as a deployment under load would run it."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tunegate-hotpath-") as data_root:
        link_prepared_checkpoint(Path(data_root))
        command = [
            sys.executable,
            "-m",
            "gateway",
            "--port",
            str(port),
            "--data-root",
            data_root,
            "--vllm-url",
            upstream_url,
            "--no-llamacpp-enabled",
        ]
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
        env.pop("TUNEGATE_API_KEY", None)
        env.pop("TUNEGATE_CONFIG", None)
        with _process(name, command, tree, port, env) as server:
            server.chat_url = f"http://127.0.0.1:{port}/v1/chat/completions"
            yield server


def _body(max_tokens: int, stream: bool = False) -> bytes:
    body = {"model": EMBEDDED_MODEL_ID, "messages": PROMPT, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


async def _plain(client: UpstreamClient, url: str, body: bytes) -> None:
    answer = await client.open(url, body, _HEADERS)
    payload = await answer.aread()
    assert answer.status_code == 200, payload


async def _streamed(url: str, body: bytes) -> int:
    """One stream on a connection of its own (as the openai SDK's streams go): its chunks."""
    answer = await open_stream(url, body, _HEADERS, connect_timeout_s=10, read_timeout_s=60)
    assert answer.status_code == 200
    events = 0
    async for piece in answer.aiter_raw():
        events += piece.count(b"\n\n")
    return events - 1  # [DONE]


async def closed_loop(
    once: Callable[[], Awaitable[object]], concurrency: int, duration_s: float
) -> tuple[int, float]:
    """(done, seconds): ``concurrency`` clients, each sending back to back."""
    done = 0
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await once()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - started


async def measure_idle(server: Server, seconds: float) -> None:
    """What ``server`` spends doing nothing (timers, watchers), per second."""
    before = server.cpu_s()
    await asyncio.sleep(seconds)
    server.idle_cpu_rate = (server.cpu_s() - before) / seconds


async def cpu_per_request(
    server: Server, client: UpstreamClient, concurrency: int, duration_s: float
) -> float:
    """Microseconds of the server's CPU per non-streamed request, idle cost taken off."""
    body = _body(1)
    before = server.cpu_s()
    done, seconds = await closed_loop(
        lambda: _plain(client, server.chat_url, body), concurrency, duration_s
    )
    used = server.cpu_s() - before - server.idle_cpu_rate * seconds
    return used / done * 1e6


async def cpu_per_chunk(server: Server, concurrency: int, streams: int) -> float:
    """Microseconds of the server's CPU per relayed chunk: streams of LONG_STREAM chunks
    minus as many of SHORT_STREAM, per extra chunk (what a stream costs to set up and
    end falls out). The upstream sends each chunk on its own (a gap between them)."""
    used: dict[int, float] = {}
    chunks: dict[int, int] = {}
    for length in (SHORT_STREAM, LONG_STREAM):
        body = _body(length, stream=True)
        before = server.cpu_s()
        started = time.perf_counter()
        counts = []
        for _ in range(streams // concurrency):
            counts += await asyncio.gather(
                *(_streamed(server.chat_url, body) for _ in range(concurrency))
            )
        seconds = time.perf_counter() - started
        used[length] = server.cpu_s() - before - server.idle_cpu_rate * seconds
        chunks[length] = sum(counts)
    extra = chunks[LONG_STREAM] - chunks[SHORT_STREAM]
    return (used[LONG_STREAM] - used[SHORT_STREAM]) / extra * 1e6


async def added_latency(
    targets: list[Server], rounds: int, block: int = 1
) -> dict[str, LatencyStats]:
    """c=1: ``block`` requests back to back to each target, the targets in turns, ``rounds``
    times. With ``block`` 1, every request finds its target idle since the others' turns;
    with a larger one, it is one client's closed loop, as c=1 means for a deployment."""
    body = _body(1)
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    client = UpstreamClient(10, 60)
    try:
        for round_no in range(rounds + max(1, 50 // block)):
            for target in targets:
                for _ in range(block):
                    started = time.perf_counter()
                    await _plain(client, target.chat_url, body)
                    if round_no * block >= 50:
                        samples[target.name].append(time.perf_counter() - started)
    finally:
        client.close()
    return {name: LatencyStats.of(values) for name, values in samples.items()}


async def throughput(server: Server, stream: bool, concurrency: int, duration_s: float) -> float:
    """Answers per second with ``concurrency`` clients (16-chunk streams, or plain)."""
    if stream:
        body = _body(16, stream=True)
        done, seconds = await closed_loop(
            lambda: _streamed(server.chat_url, body), concurrency, duration_s
        )
        return done / seconds
    client = UpstreamClient(10, 60, max_idle=concurrency)
    body = _body(1)
    try:
        await closed_loop(lambda: _plain(client, server.chat_url, body), concurrency, 0.5)
        done, seconds = await closed_loop(
            lambda: _plain(client, server.chat_url, body), concurrency, duration_s
        )
    finally:
        client.close()
    return done / seconds


async def hotpath(quick: bool, before: Path | None = None) -> list[Row]:
    windows = 3 if quick else 5
    duration_s = 1.5 if quick else 3.0
    rows: list[Row] = []
    with ExitStack() as stack:
        instant = stack.enter_context(upstream(0.0, chunk_gap_ms=1.0))
        ours = stack.enter_context(gateway("gateway", REPO, instant.chat_url[: -len(CHAT_PATH)]))
        earlier = (
            stack.enter_context(gateway("before", before, instant.chat_url[: -len(CHAT_PATH)]))
            if before
            else None
        )
        gateways = [g for g in (earlier, ours) if g is not None]
        client = UpstreamClient(10, 60, max_idle=8)
        try:
            for g in (instant, *gateways):  # warm: connections, first-request paths
                await closed_loop(lambda g=g: _plain(client, g.chat_url, _body(1)), 4, 0.5)
            for server in (instant, *gateways):
                await measure_idle(server, 2.0 if quick else 4.0)
            request_cpu: dict[str, list[float]] = {s.name: [] for s in (instant, *gateways)}
            for _ in range(windows):
                for server in (instant, *gateways):
                    request_cpu[server.name].append(
                        await cpu_per_request(server, client, 4, duration_s)
                    )
        finally:
            client.close()
        floor = stack.enter_context(tcp_relay(instant))
        await measure_idle(floor, 2.0 if quick else 4.0)
        chunk_cpu: dict[str, list[float]] = {s.name: [] for s in (floor, *gateways)}
        for _ in range(windows):
            for server in (floor, *gateways):
                chunk_cpu[server.name].append(
                    await cpu_per_chunk(server, 8, streams=48 if quick else 96)
                )
        targets = [instant, floor, *gateways]
        interleaved = await added_latency(targets, rounds=300 if quick else 1000)
        latency = await added_latency(targets, rounds=6 if quick else 20, block=50)
    rows += _cpu_rows(request_cpu, chunk_cpu, latency, earlier is not None)
    rows.append(_interleaved_row(interleaved))
    trees = {"gateway": REPO, **({"before": before} if before else {})}
    rows += await _loaded(trees, duration_s, windows)
    return rows


def _cpu_rows(
    request_cpu: dict[str, list[float]],
    chunk_cpu: dict[str, list[float]],
    latency: dict[str, LatencyStats],
    with_before: bool,
) -> list[Row]:
    per_request = statistics.median(request_cpu["gateway"])
    per_chunk = statistics.median(chunk_cpu["gateway"])
    added = latency["gateway"].p50_ms - latency["upstream"].p50_ms
    rows = [
        Row(
            "hot path",
            "CPU per request, no stream",
            statistics.median(request_cpu["upstream"]),
            per_request,
            "µs",
            "gateway ≤ 500 µs (baseline: the upstream, a bare ASGI app)",
            per_request <= 500,
        ),
        Row(
            "hot path",
            "CPU per streamed chunk",
            0.0 if not with_before else statistics.median(chunk_cpu["before"]),
            per_chunk,
            "µs",
            "≤ 20 µs" + (" (baseline: before)" if with_before else ""),
            per_chunk <= 20,
        ),
        Row(
            "hot path",
            "latency p50, c=1",
            latency["upstream"].p50_ms,
            latency["gateway"].p50_ms,
            "ms",
            f"added ≤ 0.5 ms (added {added:.2f})",
            added <= 0.5,
        ),
        # What relaying a chunk costs on this machine at all (a read from one socket, a
        # write to another, one Python callback): the gateway's figure is this floor
        # plus its own work on the chunk (HTTP framing both ways, the route's relay).
        Row(
            "hot path",
            "CPU per streamed chunk, TCP relay",
            statistics.median(chunk_cpu["tcp relay"]),
            per_chunk,
            "µs",
            "report (baseline: a bare TCP relay)",
        ),
        # What one more hop costs on this machine at all: the gateway's added latency
        # is this floor plus its own work.
        Row(
            "hot path",
            "added p50, c=1, TCP relay",
            latency["tcp relay"].p50_ms - latency["upstream"].p50_ms,
            added,
            "ms",
            "report (baseline: a bare TCP relay)",
        ),
    ]
    if with_before:
        rows.insert(
            1,
            Row(
                "hot path",
                "CPU per request, before",
                statistics.median(request_cpu["before"]),
                per_request,
                "µs",
                "≤ a quarter of before",
                per_request <= statistics.median(request_cpu["before"]) / 4,
            ),
        )
        before_added = latency["before"].p50_ms - latency["upstream"].p50_ms
        rows.append(
            Row(
                "hot path",
                "added p50, c=1, before",
                before_added,
                added,
                "ms",
            )
        )
    return rows


def _interleaved_row(latency: dict[str, LatencyStats]) -> Row:
    """c=1 with every request in turns with the other targets': each finds the gateway idle
    and its core's caches holding other processes' work, so the gateway's own work costs
    several times its figure back to back (the TCP relay, with next to no work, does not)."""
    added = latency["gateway"].p50_ms - latency["upstream"].p50_ms
    relay = latency["tcp relay"].p50_ms - latency["upstream"].p50_ms
    return Row(
        "hot path", "added p50, c=1, in turns", relay, added, "ms", "report (baseline: TCP relay)"
    )


async def _loaded(trees: dict[str, Path], duration_s: float, windows: int) -> list[Row]:
    """20 ms upstream, 16 clients: answers/s through each gateway vs direct, in turns."""
    rows: list[Row] = []
    with ExitStack() as stack:
        slow = stack.enter_context(upstream(20.0))
        base = slow.chat_url[: -len(CHAT_PATH)]
        fronts = [stack.enter_context(gateway(name, tree, base)) for name, tree in trees.items()]
        for stream in (False, True):
            rates: dict[str, list[float]] = {s.name: [] for s in (slow, *fronts)}
            for _ in range(windows):
                for server in (slow, *fronts):
                    rates[server.name].append(await throughput(server, stream, 16, duration_s))
            direct = statistics.median(rates["upstream"])
            kind = "streams/s" if stream else "requests/s"
            for front in fronts:
                measured = statistics.median(rates[front.name])
                label = "" if front.name == "gateway" else ", before"
                rows.append(
                    Row(
                        "20 ms upstream",
                        f"{kind} c=16{label}",
                        direct,
                        measured,
                        "rps",
                        "≥ 0.9× direct" if front.name == "gateway" else "",
                        measured / direct >= 0.9 if front.name == "gateway" else None,
                    )
                )
    return rows
