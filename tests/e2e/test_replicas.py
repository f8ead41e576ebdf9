"""A base model served by two vLLM replicas, through the openai SDK: requests wait for a
starting engine, adapters keep to the replica that holds them while load is low and spread
under load, and a replica killed under a steady load fails no request and rejoins.

Two gateways share the cost of the two replicas (vLLM start-ups are the dearest thing in
the suite): one runs them (``--vllm-replicas 2``, one core each), the other is given their
URLs (``--vllm-urls``). One SIGKILL of a replica then shows failover and rejoining on both:
the managed gateway restarts it, the URL gateway sees it come back by its health check.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest

from tests.e2e.conftest import BASE, STARTUP_TIMEOUT_S
from tests.e2e.test_adapters import UNSEEN, ask, is_ahoy_style, is_json_style
from tests.support.gateway_process import GatewayProcess, start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.restarts_engine]

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@dataclass
class Fleet:
    managed: GatewayProcess
    by_url: GatewayProcess
    adapters: dict[str, dict[str, str]]  # gateway name -> behaviour -> adapter id


def replicas(gateway: GatewayProcess) -> dict[str, dict]:
    """The base's replicas as /v1/models shows them, by name."""
    with gateway.http() as http:
        model = http.get(f"/v1/models/{BASE}").json()
    return {r["name"]: r for r in model["replicas"]}


def holders(gateway: GatewayProcess, adapter: str) -> set[str]:
    return {name for name, r in replicas(gateway).items() if adapter in r["adapters"]}


def burst(gateway: GatewayProcess, model: str, count: int = 6) -> list[str]:
    """``count`` requests at once for ``model``: their answers."""
    client = gateway.client()
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: ask(client, model, "What do bees make?"), range(count)))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, import_dir, trained_adapters) -> Iterator[Fleet]:
    folders = {name: import_dir / name for name in trained_adapters}
    imports = ("--adapter-import-dirs", json.dumps([str(import_dir)]))
    managed = start_gateway(
        tmp_path_factory.mktemp("replicas-managed"),
        "--vllm-replicas",
        "2",
        "--no-llamacpp-enabled",
        "--restart-backoff-initial-s",
        "0.5",
        *imports,
    )
    by_url = None
    try:
        managed.wait_ready(60, path="/health")
        # Sent at once, long before vLLM is up: it waits for the engine instead of failing.
        started = time.monotonic()
        first = managed.client(max_retries=0, timeout=STARTUP_TIMEOUT_S)
        reply = first.chat.completions.create(
            model=BASE, messages=PROMPT, max_tokens=8, temperature=0
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert time.monotonic() - started > 5  # it really waited for a start-up
        managed.wait_ready(STARTUP_TIMEOUT_S)
        urls = [e["url"] for e in managed.engines()]
        assert len(urls) == 2
        by_url = start_gateway(
            tmp_path_factory.mktemp("replicas-by-url"),
            "--vllm-urls",
            json.dumps(urls),
            "--no-llamacpp-enabled",
            *imports,
        )
        by_url.wait_ready(120)
        yield Fleet(
            managed,
            by_url,
            {
                "managed": managed.register_adapters(folders, BASE),
                "by_url": by_url.register_adapters(folders, BASE),
            },
        )
    finally:
        if by_url is not None:
            by_url.stop()
        managed.stop()


@pytest.mark.parametrize("which", ["managed", "by_url"])
def test_adapters_keep_to_their_replica_while_load_is_low_and_spread_under_load(fleet, which):
    gateway: GatewayProcess = getattr(fleet, which)
    client = gateway.client()
    json_id, ahoy_id = fleet.adapters[which]["json"], fleet.adapters[which]["ahoy"]
    for question in UNSEEN:
        assert is_json_style(ask(client, json_id, question))
        assert is_ahoy_style(ask(client, ahoy_id, question))
    # One request at a time: each adapter stays on the one replica that loaded it.
    assert len(holders(gateway, json_id)) == 1 and len(holders(gateway, ahoy_id)) == 1
    before = replicas(gateway)
    (home,) = holders(gateway, json_id)
    for question in UNSEEN:
        assert is_json_style(ask(client, json_id, question))
    after = replicas(gateway)
    assert after[home]["requests"] - before[home]["requests"] == len(UNSEEN)

    # Many at once: the adapter spreads, and both replicas answer the base and both adapters.
    burst = [json_id] * 6 + [ahoy_id] * 6 + [BASE] * 6
    with ThreadPoolExecutor(len(burst)) as pool:
        answers = list(pool.map(lambda m: (m, ask(client, m, "What do bees make?")), burst))
    assert all(is_json_style(a) for m, a in answers if m == json_id)
    assert all(is_ahoy_style(a) for m, a in answers if m == ahoy_id)
    assert holders(gateway, json_id) == set(after)
    assert all(r["requests"] > after[name]["requests"] for name, r in replicas(gateway).items())


class SteadyLoad:
    """Non-streaming requests, one after another on each of two threads, until stopped."""

    def __init__(self, gateway: GatewayProcess, models: list[str]) -> None:
        self.client = gateway.client(timeout=120)
        self.models = models
        self.answered_at: list[float] = []  # time.monotonic() of each answer
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(2)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)

    def answered_since(self, moment: float) -> int:
        return sum(1 for at in self.answered_at if at > moment)

    def _run(self, index: int) -> None:
        turn = index
        while not self._stop.is_set():
            model = self.models[turn % len(self.models)]
            turn += 1
            try:
                reply = self.client.chat.completions.create(
                    model=model, messages=PROMPT, max_tokens=4, temperature=0
                )
                assert reply.choices[0].message.content is not None
                self.answered_at.append(time.monotonic())
            except (openai.APIError, AssertionError) as error:
                self.failures.append(f"{model}: {error!r}")


def wait_until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise TimeoutError(what)


def test_a_replica_killed_under_load_fails_no_request_and_rejoins(fleet):
    managed, by_url = fleet.managed, fleet.by_url
    json_managed, json_by_url = fleet.adapters["managed"]["json"], fleet.adapters["by_url"]["json"]
    for gateway, adapter in ((managed, json_managed), (by_url, json_by_url)):
        burst(gateway, adapter)  # spreads the adapter to both replicas
    victim = next(e for e in managed.engines() if json_managed in e["adapters"])
    victim_on_url = next(name for name in replicas(by_url) if name.endswith(victim["url"]))
    held_by_url = set(replicas(by_url)[victim_on_url]["adapters"])
    held_managed = set(victim["adapters"])
    assert json_by_url in held_by_url and json_managed in held_managed
    with (
        SteadyLoad(managed, [BASE, json_managed]) as on_managed,
        SteadyLoad(by_url, [BASE, json_by_url]) as on_url,
    ):
        loads = (on_managed, on_url)
        started = time.monotonic()
        wait_until(lambda: all(load.answered_at for load in loads), 60, "no load answered")
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(
            lambda: replicas(managed)[victim["name"]]["state"] in ("restarting", "starting"),
            30,
            "the managed gateway did not see its replica die",
        )
        # The load runs across the kill: a few answers each, counted after it, however slow
        # the machine (the victim's restart competes with the survivor for the cores).
        wait_until(
            lambda: all(load.answered_since(killed_at + 1) >= 3 for load in loads),
            90,
            "the surviving replica did not carry the load",
        )
    assert not on_managed.failures and not on_url.failures, on_managed.failures + on_url.failures
    assert all(load.answered_since(started) > load.answered_since(killed_at) for load in loads)

    # The managed gateway restarts it; it rejoins both gateways with its adapters.
    wait_until(
        lambda: replicas(managed)[victim["name"]]["state"] == "ready",
        STARTUP_TIMEOUT_S,
        "the killed replica was not restarted",
    )
    wait_until(
        lambda: replicas(by_url)[victim_on_url]["state"] == "ready",
        60,
        "the URL gateway did not take the replica back",
    )
    assert time.monotonic() - killed_at > 5
    assert held_managed <= set(replicas(managed)[victim["name"]]["adapters"])
    assert held_by_url <= set(replicas(by_url)[victim_on_url]["adapters"])
    # It answers again: base requests at once spread over both replicas.
    for gateway in (managed, by_url):
        before = {n: r["requests"] for n, r in replicas(gateway).items()}
        burst(gateway, BASE)
        after = {n: r["requests"] for n, r in replicas(gateway).items()}
        assert all(after[n] > before[n] for n in after)
