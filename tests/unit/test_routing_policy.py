"""The routing policies over fake replica loads: affinity, bounded spread, failover, rejoin."""

from __future__ import annotations

import collections

from gateway.engines.routing import (
    Affinity,
    LeastLoaded,
    ReplicaLoad,
    RoundRobin,
    make_policy,
    rendezvous_order,
)


def fleet(loads: dict[str, int], adapters: dict[str, set[str]] | None = None) -> list[ReplicaLoad]:
    adapters = adapters or {}
    return [ReplicaLoad(n, load, frozenset(adapters.get(n, ()))) for n, load in loads.items()]


def test_base_requests_go_to_the_least_loaded_replica():
    policy = Affinity()
    assert policy.choose(fleet({"a": 3, "b": 1, "c": 2}), None).name == "b"
    # Among idle replicas, each takes its turn.
    idle = fleet({"a": 0, "b": 0})
    assert {policy.choose(idle, None).name for _ in range(4)} == {"a", "b"}


def test_an_adapter_stays_on_the_replica_that_holds_it_while_load_is_low():
    policy = Affinity(load_bound=0.25)
    replicas = fleet({"a": 1, "b": 0}, {"a": {"x"}})
    assert policy.choose(replicas, "x").name == "a"  # b is idler, but x is loaded on a


def test_a_cold_adapter_has_one_home_and_cold_adapters_spread_over_replicas():
    policy = Affinity()
    replicas = fleet({f"r{i}": 0 for i in range(4)})
    homes = {f"adapter-{i}": policy.choose(replicas, f"adapter-{i}").name for i in range(400)}
    assert all(policy.choose(replicas, a).name == home for a, home in homes.items())
    per_replica = collections.Counter(homes.values())
    assert set(per_replica) == {"r0", "r1", "r2", "r3"}
    assert max(per_replica.values()) < 1.3 * min(per_replica.values())


def test_a_hot_adapter_spreads_once_its_holders_are_too_busy_and_load_stays_bounded():
    policy = Affinity(load_bound=0.25)
    loads = {f"r{i}": 0 for i in range(4)}
    holders: dict[str, set[str]] = collections.defaultdict(set)
    # 40 requests of one adapter arrive while none finishes.
    for _ in range(40):
        chosen = policy.choose(fleet(loads, holders), "hot").name
        loads[chosen] += 1
        holders[chosen].add("hot")
    assert len([r for r, h in holders.items() if "hot" in h]) == 4  # spread everywhere
    mean = sum(loads.values()) / len(loads)
    assert max(loads.values()) <= 1.25 * mean + 1
    # Its spread order is the adapter's own: the home first, then the second home.
    order = [r.name for r in rendezvous_order("hot", fleet(dict.fromkeys(loads, 0)))]
    first_two = Affinity(0.25)
    seen = []
    trial = dict.fromkeys(loads, 0)
    trial_holders: dict[str, set[str]] = collections.defaultdict(set)
    for _ in range(3):
        name = first_two.choose(fleet(trial, trial_holders), "hot").name
        trial[name] += 1
        trial_holders[name].add("hot")
        seen.append(name)
    assert seen[0] == order[0] and order[1] in seen


def test_failover_a_replica_out_of_the_candidates_is_never_chosen_and_rejoins_as_a_holder():
    policy = Affinity()
    replicas = fleet({"a": 0, "b": 0, "c": 0})
    home = policy.choose(replicas, "x").name
    without_home = [r for r in replicas if r.name != home]  # taken out: the set leaves it out
    fallback = policy.choose(without_home, "x").name
    assert fallback != home
    assert fallback == rendezvous_order("x", replicas)[1].name  # the adapter's second home
    # Back with its adapter reloaded, the home gets x again.
    rejoined = [
        ReplicaLoad(r.name, r.in_flight, frozenset({"x"}) if r.name == home else frozenset())
        for r in replicas
    ]
    assert policy.choose(rejoined, "x").name == home


def test_least_loaded_ignores_adapters_and_round_robin_takes_turns():
    replicas = fleet({"a": 2, "b": 0}, {"a": {"x"}})
    assert LeastLoaded().choose(replicas, "x").name == "b"
    turns = RoundRobin()
    assert [turns.choose(replicas, "x").name for _ in range(4)] == ["a", "b", "a", "b"]


def test_policies_come_from_a_table():
    assert [make_policy(n).name for n in ("affinity", "least-loaded", "round-robin")] == [
        "affinity",
        "least-loaded",
        "round-robin",
    ]
