"""Loading adapters into vLLM: once per name, leased while in use, the least recently used
unleased one evicted, loads in parallel, deletes after the requests in flight."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from gateway.engines.base import Upstream
from gateway.engines.lora_slots import LoraSlots
from gateway.errors import ServiceUnavailableError


class FakeVllmAdmin:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        name = json.loads(request.content)["lora_name"]
        self.calls.append((request.url.path.rsplit("/", 1)[-1], name))
        await asyncio.sleep(0.01)  # concurrent first requests overlap here
        return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")


async def test_concurrent_first_requests_load_once_and_lru_evicts():
    admin = FakeVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2)
        url = Upstream("http://vllm")
        await asyncio.gather(*(slots.ensure_loaded(url, "a", Path("/a")) for _ in range(5)))
        assert admin.calls == [("load_lora_adapter", "a")]
        await slots.ensure_loaded(url, "b", Path("/b"))
        await slots.ensure_loaded(url, "a", Path("/a"))  # a is now the most recent
        await slots.ensure_loaded(url, "c", Path("/c"))  # evicts b
        assert admin.calls[-2:] == [("unload_lora_adapter", "b"), ("load_lora_adapter", "c")]
        assert slots.loaded() == ["a", "c"]
        await slots.ensure_loaded(url, "b", Path("/b"))  # b reloads transparently
        assert slots.loaded() == ["c", "b"]
        assert slots.forget_all() == [("c", Path("/c")), ("b", Path("/b"))]


async def test_already_loaded_counts_as_loaded():
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error": {"message": "The lora adapter 'a' has already been loaded."}}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        slots = LoraSlots(http, capacity=2)
        await slots.ensure_loaded(Upstream("http://vllm"), "a", Path("/a"))
        assert slots.loaded() == ["a"]


# --- the lifecycle races, driven on purpose -------------------------------------------------


class GatedVllmAdmin:
    """vLLM's adapter API whose answers the test lets through one at a time: a call enters
    (and says so), then waits for its gate, if the test set one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gates: dict[tuple[str, str], asyncio.Event] = {}
        self._entered: dict[tuple[str, str], asyncio.Event] = {}

    def hold(self, op: str, name: str) -> asyncio.Event:
        """Calls ``op`` (load or unload) for ``name`` wait until the returned event is set."""
        return self.gates.setdefault((op, name), asyncio.Event())

    def entered(self, op: str, name: str) -> asyncio.Event:
        return self._entered.setdefault((op, name), asyncio.Event())

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        op = request.url.path.rsplit("/", 1)[-1].removesuffix("_lora_adapter")
        name = json.loads(request.content)["lora_name"]
        self.calls.append((op, name))
        self.entered(op, name).set()
        gate = self.gates.get((op, name))
        if gate is not None:
            await gate.wait()
        return httpx.Response(200, text="Success")


URL = Upstream("http://vllm")


async def settle() -> None:
    """Let every task that can run, run (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def leased(slots: LoraSlots, name: str):
    release = slots.lease(name)
    await slots.ensure_loaded(URL, name, Path(f"/{name}"))
    return release


async def test_eviction_passes_over_a_leased_adapter():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2)
        await leased(slots, "a")  # a request on a is in flight: a stays
        (await leased(slots, "b"))()  # b answered
        assert slots.loaded() == ["a", "b"]  # a is the least recently used
        release_c = await leased(slots, "c")
        assert ("unload", "a") not in admin.calls
        assert admin.calls[-2:] == [("unload", "b"), ("load", "c")]
        assert slots.loaded() == ["a", "c"]
        release_c()


async def test_a_load_waits_while_every_slot_is_leased_and_takes_the_first_one_freed():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2, slot_wait_s=60)
        release_a = await leased(slots, "a")
        release_b = await leased(slots, "b")
        waiting = asyncio.create_task(leased(slots, "c"))
        await settle()
        assert not waiting.done() and admin.calls == [("load", "a"), ("load", "b")]
        release_b()  # b's answer ended: its slot is the first one free
        release_c = await waiting
        assert admin.calls[-2:] == [("unload", "b"), ("load", "c")]
        assert slots.loaded() == ["a", "c"]
        release_a()
        release_c()


async def test_every_slot_leased_past_the_wait_is_503_with_retry_after():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=1, slot_wait_s=0.05)
        await leased(slots, "a")
        with pytest.raises(ServiceUnavailableError) as busy:
            await leased(slots, "b")
        assert busy.value.status_code == 503 and busy.value.code == "adapter_slots_busy"
        assert busy.value.headers() == {"Retry-After": "2"}
        assert slots.loaded() == ["a"] and ("unload", "a") not in admin.calls


async def test_cold_loads_of_different_adapters_overlap():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2)
        await slots.ensure_loaded(URL, "x", Path("/x"))
        await slots.ensure_loaded(URL, "y", Path("/y"))  # full: both loads must evict
        gates = [admin.hold("load", "a"), admin.hold("load", "b")]
        loads = [asyncio.create_task(leased(slots, name)) for name in ("a", "b")]
        # Both load calls are inside vLLM at once, neither answered yet.
        await asyncio.wait_for(admin.entered("load", "a").wait(), 5)
        await asyncio.wait_for(admin.entered("load", "b").wait(), 5)
        assert not any(load.done() for load in loads)
        assert {("unload", "x"), ("unload", "y")} <= set(admin.calls)
        for gate in gates:
            gate.set()
        await asyncio.gather(*loads)
        assert sorted(slots.loaded()) == ["a", "b"]


async def test_loads_of_one_adapter_coalesce_and_survive_a_caller_that_leaves():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2)
        gate = admin.hold("load", "a")
        callers = [asyncio.create_task(leased(slots, "a")) for _ in range(3)]
        await asyncio.wait_for(admin.entered("load", "a").wait(), 5)
        callers[0].cancel()  # its client went away mid-load
        gate.set()
        await asyncio.gather(*callers[1:])
        assert admin.calls == [("load", "a")]
        assert slots.loaded() == ["a"] and slots.loads == 1


async def test_an_adapter_asked_for_while_its_unload_is_in_flight_loads_after_it():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2)
        await slots.ensure_loaded(URL, "a", Path("/a"))
        await slots.ensure_loaded(URL, "b", Path("/b"))
        unloading_a = admin.hold("unload", "a")
        c = asyncio.create_task(leased(slots, "c"))  # evicts a; its unload hangs
        await asyncio.wait_for(admin.entered("unload", "a").wait(), 5)
        again = asyncio.create_task(leased(slots, "a"))
        await settle()
        # Loading a now would be answered "already loaded", then a's unload would land.
        assert admin.calls.count(("load", "a")) == 1
        unloading_a.set()
        await asyncio.gather(c, again)
        assert admin.calls.index(("unload", "a")) < len(admin.calls) - 1
        assert admin.calls[admin.calls.index(("unload", "a")) :].count(("load", "a")) == 1
        assert sorted(slots.loaded()) == ["a", "c"]


async def test_retiring_waits_for_the_requests_in_flight_then_unloads():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2)
        release = await leased(slots, "a")
        retiring = asyncio.create_task(slots.retire(URL, "a"))
        await settle()
        assert not retiring.done() and ("unload", "a") not in admin.calls
        release()  # the request's answer ended
        await retiring
        assert admin.calls[-1] == ("unload", "a") and slots.loaded() == []


async def test_retiring_unloads_anyway_after_the_drain_time():
    admin = GatedVllmAdmin()
    async with httpx.AsyncClient(transport=httpx.MockTransport(admin)) as http:
        slots = LoraSlots(http, capacity=2, drain_s=0.05)
        await leased(slots, "a")  # never answered
        await slots.retire(URL, "a")
        assert admin.calls[-1] == ("unload", "a") and slots.loaded() == []
