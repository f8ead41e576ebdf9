"""The fleet benchmark: the routing policies side by side, in one run.

1. Through the real gateway process: 8 fake vLLM replicas (``fleet_replicas``), 200
   adapters of Zipf(1.1) popularity, open-loop Poisson arrivals at 70% of the fleet's
   capacity. Each policy gets a fresh gateway and fresh replicas on the same data root;
   figures are taken after a warm-up.
2. The policy alone (virtual time, no HTTP) at 32 replicas and 2,000 adapters.

Reported per policy: adapter loads per 1,000 requests, p50/p99 latency, and the busiest
replica's request count over the mean.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import httpx

from gateway.engines.process import free_port
from gateway.engines.routing import ReplicaLoad, make_policy
from tests.bench.fleet_model import FleetResult, FleetShape, poisson_arrivals, simulate
from tests.bench.suites import Row, _wait_for
from tests.support.adapter_factory import write_adapter, write_base
from tests.support.gateway_process import start_gateway

BASE = "fleet-base"
POLICIES = ("affinity", "least-loaded", "round-robin")
_METRIC = re.compile(r'^(tunegate_replica_\w+)\{engine="([^"]+)"\} ([0-9.e+]+)$', re.M)


@contextmanager
def fake_replicas(shape: FleetShape) -> Iterator[list[str]]:
    ports = [free_port() for _ in range(shape.replicas)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.bench.fleet_replicas",
            "--ports",
            ",".join(map(str, ports)),
            "--shape",
            json.dumps(asdict(shape)),
            "--base",
            BASE,
        ]
    )
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            _wait_for(url + "/health", 30)
        yield urls
    finally:
        process.terminate()
        process.wait(10)


def replica_counters(metrics: str) -> dict[str, dict[str, float]]:
    """metric name -> replica -> value, for the per-replica gauges of /metrics."""
    found: dict[str, dict[str, float]] = {}
    for name, replica, value in _METRIC.findall(metrics):
        found.setdefault(name, {})[replica] = float(value)
    return found


async def open_loop(
    url: str, adapters: list[str], arrivals: list[tuple[float, str]]
) -> tuple[list[float], list[str]]:
    """Send each request at its arrival time, whatever is still in flight: the latencies
    (s) of those answered, and what went wrong with the others."""
    names = {f"adapter-{i}": adapter for i, adapter in enumerate(adapters)}
    latencies: list[float] = []
    failures: list[str] = []
    # Idle connections expire before the gateway's keep-alive timeout (5 s), so that none is
    # reused in the instant the gateway closes it.
    limits = httpx.Limits(
        max_connections=2000, max_keepalive_connections=2000, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:

        async def one(adapter: str) -> None:
            body = {"model": adapter, "messages": [{"role": "user", "content": "hi"}]}
            started = time.perf_counter()
            try:
                try:
                    response = await client.post(url + "/v1/chat/completions", json=body)
                except httpx.TransportError:  # a kept-alive connection closed as it was reused:
                    response = await client.post(url + "/v1/chat/completions", json=body)
                    # the openai SDK sends again too (max_retries)
            except httpx.HTTPError as error:
                failures.append(repr(error))
                return
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")

        start = time.perf_counter()
        tasks = []
        for at, name in arrivals:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(names[name])))
        await asyncio.gather(*tasks)
    return latencies, failures


async def through_gateway(shape: FleetShape, seconds: float, warmup_s: float) -> dict:
    results: dict[str, FleetResult] = {}
    with tempfile.TemporaryDirectory(prefix="tunegate-fleet-") as tmp:
        root = Path(tmp)
        base_dir = write_base(root / "base")
        imports = root / "imports"
        for i in range(shape.adapters):
            write_adapter(imports / f"a{i}", rank=4)
        data_root = root / "data"
        data_root.mkdir()
        adapter_ids: list[str] = []
        for policy in POLICIES:
            with fake_replicas(shape) as urls:
                gateway = start_gateway(
                    data_root,
                    "--no-embedded-model",
                    "--models",
                    json.dumps([{"id": BASE, "hf_dir": str(base_dir)}]),
                    "--vllm-urls",
                    json.dumps(urls),
                    "--no-llamacpp-enabled",
                    "--routing-policy",
                    policy,
                    "--vllm-max-loras",
                    str(shape.max_loras),
                    "--vllm-max-cpu-loras",
                    str(shape.max_cpu_loras),
                    "--engine-max-in-flight",
                    "2000",
                    "--adapter-import-dirs",
                    json.dumps([str(imports)]),
                    "--log-level",
                    "warning",
                )
                try:
                    gateway.wait_ready(60)
                    with gateway.http() as http:
                        if not adapter_ids:  # registered once, kept on the data root
                            for i in range(shape.adapters):
                                answer = http.post(
                                    "/v1/adapters",
                                    json={
                                        "path": str(imports / f"a{i}"),
                                        "base": BASE,
                                        "suffix": f"a{i}",
                                    },
                                )
                                answer.raise_for_status()
                                adapter_ids.append(answer.json()["id"])
                        arrivals = poisson_arrivals(shape, warmup_s + seconds, seed=7)
                        warm = [a for a in arrivals if a[0] < warmup_s]
                        _, failed = await open_loop(gateway.url, adapter_ids, warm)
                        before = replica_counters(http.get("/metrics").text)
                        measured = [(t - warmup_s, a) for t, a in arrivals if t >= warmup_s]
                        latencies, failures = await open_loop(gateway.url, adapter_ids, measured)
                        after = replica_counters(http.get("/metrics").text)
                    if failed or failures:
                        raise RuntimeError(
                            f"{len(failed) + len(failures)} fleet requests failed under "
                            f"{policy}, first: {(failed + failures)[0]}\n{gateway.log_tail()}"
                        )
                finally:
                    gateway.stop()
            loads = after["tunegate_replica_adapter_loads"]
            routed = after["tunegate_replica_requests_routed"]
            results[policy] = FleetResult(
                requests=len(latencies),
                adapter_loads=round(
                    sum(loads.values()) - sum(before["tunegate_replica_adapter_loads"].values())
                ),
                latencies_s=latencies,
                per_replica=[
                    round(routed[r] - before["tunegate_replica_requests_routed"].get(r, 0))
                    for r in routed
                ],
            )
    return results


def compare(suite: str, results: dict[str, FleetResult], goals: bool) -> list[Row]:
    """Each policy against round-robin; the goals apply to affinity through the gateway."""
    baseline = results["round-robin"]
    rows = []
    for policy in ("affinity", "least-loaded"):
        mine = results[policy]
        with_goal = goals and policy == "affinity"
        loads = mine.loads_per_1000 / baseline.loads_per_1000
        p99 = mine.percentile_ms(0.99) / baseline.percentile_ms(0.99)
        rows += [
            Row(
                suite,
                f"{policy}: loads/1k req",
                baseline.loads_per_1000,
                mine.loads_per_1000,
                "loads per 1,000 requests (baseline: round-robin)",
                "≤ 0.2× round-robin" if with_goal else "",
                loads <= 0.2 if with_goal else None,
            ),
            Row(
                suite,
                f"{policy}: p50 ms",
                baseline.percentile_ms(0.5),
                mine.percentile_ms(0.5),
                "ms (baseline: round-robin)",
            ),
            Row(
                suite,
                f"{policy}: p99 ms",
                baseline.percentile_ms(0.99),
                mine.percentile_ms(0.99),
                "ms (baseline: round-robin)",
                "≤ 0.7× round-robin" if with_goal else "",
                p99 <= 0.7 if with_goal else None,
            ),
            Row(
                suite,
                f"{policy}: max/mean load",
                baseline.max_over_mean,
                mine.max_over_mean,
                "busiest replica's requests ÷ mean (baseline: round-robin)",
                "affinity ≤ 1.25" if with_goal else "",
                mine.max_over_mean <= 1.25 if with_goal else None,
            ),
        ]
    return rows


async def fleet(quick: bool) -> list[Row]:
    shape = FleetShape()
    seconds, warmup = (20, 8) if quick else (60, 15)
    rows = compare("fleet (gateway)", await through_gateway(shape, seconds, warmup), goals=True)
    large = FleetShape(replicas=32, adapters=2000)
    simulated = {p: simulate(large, p, 20 if quick else 60, warmup_s=10) for p in POLICIES}
    rows += compare("fleet (32×2000)", simulated, goals=False)
    costs = {p: decision_cost_us(large, p) for p in ("least-loaded", "affinity")}
    rows.append(
        Row(
            "fleet (32×2000)",
            "affinity: µs per choice",
            costs["least-loaded"],
            costs["affinity"],
            "µs per routing decision over 32 replicas (baseline: least-loaded)",
        )
    )
    return rows


def decision_cost_us(shape: FleetShape, policy_name: str, decisions: int = 20_000) -> float:
    """What one choice costs the gateway, with every replica holding ``max_cpu_loras``."""
    policy = make_policy(policy_name)
    names = shape.adapter_names()
    replicas = [
        ReplicaLoad(
            f"r{i}",
            i % 7,
            frozenset(names[(i * shape.max_cpu_loras + j) % len(names)] for j in range(32)),
        )
        for i in range(shape.replicas)
    ]
    wanted = [names[(i * 7919) % len(names)] for i in range(decisions)]
    started = time.perf_counter()
    for adapter in wanted:
        policy.choose(replicas, adapter)
    return (time.perf_counter() - started) / decisions * 1e6
