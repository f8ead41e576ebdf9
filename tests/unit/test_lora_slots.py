"""Loading adapters into vLLM: once per name, least recently used evicted, replay after restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from gateway.engines.base import Upstream
from gateway.engines.lora_slots import LoraSlots


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
