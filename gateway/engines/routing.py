"""Which replica of a base model answers a request: one small policy, chosen by a setting.

A policy sees only plain facts about the healthy replicas (requests in flight,
adapters loaded) and returns one of them; it never does I/O, so the policies
can be compared side by side, over fakes or in the fleet benchmark.

- ``affinity`` (default): a base-model request goes to the least-loaded replica.
  An adapter request goes to a replica that already holds the adapter, unless
  every holder is busier than ``(1 + load_bound) ×`` the mean load; then it
  spreads to the next replica of the adapter's own order. That order is
  rendezvous hashing of (adapter, replica), so a cold adapter always lands on
  the same home, and a hot one spreads to the same second home, third home...
  This is consistent hashing with bounded loads (Mirrokni, Thorup and
  Zadimoghaddam, 2018) with the residency check of llm-d's LoRA-affinity scorer
  in front: an adapter stays where it is loaded while that is not too busy, so
  hot adapters end up on several replicas and cold ones on one.
- ``least-loaded``: fewest requests in flight, ignoring adapters.
- ``round-robin``: each replica in turn.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ReplicaLoad:
    """What a policy knows of one healthy replica."""

    name: str
    in_flight: int
    adapters: frozenset[str] = field(default_factory=frozenset)


class RoutingPolicy(Protocol):
    name: str

    def choose(self, replicas: Sequence[ReplicaLoad], adapter: str | None) -> ReplicaLoad:
        """One of ``replicas`` (never empty) for a request, on ``adapter`` or the base."""


def _least_loaded(replicas: Sequence[ReplicaLoad], turn: int) -> ReplicaLoad:
    """Fewest in flight; among equals, the one ``turn`` points at, so idle
    replicas share the work instead of the first one taking all of it."""
    fewest = min(r.in_flight for r in replicas)
    idle = [r for r in replicas if r.in_flight == fewest]
    return idle[turn % len(idle)]


class LeastLoaded:
    name = "least-loaded"

    def __init__(self) -> None:
        self._turns = itertools.count()

    def choose(self, replicas: Sequence[ReplicaLoad], adapter: str | None) -> ReplicaLoad:
        return _least_loaded(replicas, next(self._turns))


class RoundRobin:
    name = "round-robin"

    def __init__(self) -> None:
        self._turns = itertools.count()

    def choose(self, replicas: Sequence[ReplicaLoad], adapter: str | None) -> ReplicaLoad:
        ordered = sorted(replicas, key=lambda r: r.name)
        return ordered[next(self._turns) % len(ordered)]


def rendezvous_order(adapter: str, replicas: Sequence[ReplicaLoad]) -> list[ReplicaLoad]:
    """The adapter's own order of the replicas (highest random weight first).

    Adding or removing a replica moves only the adapters whose home it was."""
    rank = _rendezvous_rank(adapter, tuple(sorted(r.name for r in replicas)))
    return sorted(replicas, key=lambda r: rank[r.name])


@functools.lru_cache(maxsize=8192)  # the order of an adapter changes only with the replicas
def _rendezvous_rank(adapter: str, names: tuple[str, ...]) -> dict[str, int]:
    def weight(name: str) -> bytes:
        return hashlib.blake2b(f"{adapter}\0{name}".encode(), digest_size=8).digest()

    return {name: place for place, name in enumerate(sorted(names, key=weight, reverse=True))}


class Affinity:
    name = "affinity"

    def __init__(self, load_bound: float = 0.25) -> None:
        self.load_bound = load_bound
        self._turns = itertools.count()

    def capacity(self, replicas: Sequence[ReplicaLoad]) -> int:
        """Requests a replica may have in flight before this one counts as too many:
        ``ceil((1 + bound) × mean)``, the mean counting this request."""
        total = sum(r.in_flight for r in replicas) + 1
        return math.ceil((1 + self.load_bound) * total / len(replicas))

    def choose(self, replicas: Sequence[ReplicaLoad], adapter: str | None) -> ReplicaLoad:
        if adapter is None:
            return _least_loaded(replicas, next(self._turns))
        capacity = self.capacity(replicas)
        holders = [r for r in replicas if adapter in r.adapters]
        if holders:
            least_busy = min(holders, key=lambda r: r.in_flight)
            if least_busy.in_flight < capacity:
                return least_busy
        for replica in rendezvous_order(adapter, replicas):
            if replica.in_flight < capacity:
                return replica
        return _least_loaded(replicas, next(self._turns))  # unreachable: someone is below


POLICIES: dict[str, Callable[[float], RoutingPolicy]] = {
    "affinity": lambda bound: Affinity(bound),
    "least-loaded": lambda bound: LeastLoaded(),
    "round-robin": lambda bound: RoundRobin(),
}


def make_policy(name: str, load_bound: float = 0.25) -> RoutingPolicy:
    return POLICIES[name](load_bound)
