"""Deleting an adapter while it serves, over a fake vLLM replica whose answers the test
holds: off the model table first, unloaded after the requests in flight, never reloaded,
and the models merged from it removed with it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.vllm import VllmReplicaSet
from gateway.errors import ModelNotFoundError
from gateway.process_guard import ProcessGuard
from gateway.runtime import assemble_runtime
from gateway.settings import BaseModelSpec, Settings
from tests.support.adapter_factory import write_adapter, write_base
from tests.unit.fakes import chat_completion
from tests.unit.test_routing import assert_openai_error

BASE = BaseModelSpec(id="base", hf_dir=Path("/unused"))


@dataclass
class HeldReplica:
    """One vLLM server; its chat answers wait for ``answer`` once ``hold_chats`` is set."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    hold_chats: bool = False
    chat_entered: asyncio.Event = field(default_factory=asyncio.Event)
    answer: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(request.content)
        if request.url.path.endswith("_lora_adapter"):
            op = request.url.path.rsplit("/", 1)[-1].removesuffix("_lora_adapter")
            self.calls.append((op, body["lora_name"]))
            return httpx.Response(200, text="Success")
        self.calls.append(("chat", body["model"]))
        if self.hold_chats:
            self.chat_entered.set()
            await self.answer.wait()
        return httpx.Response(200, json=chat_completion(body["model"], "Paris"))


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (no time passes)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


@pytest.fixture
async def served(tmp_path):
    """A gateway over one fake replica, with one adapter registered; yields
    (client, replica, adapter id, catalog, engine)."""
    imports = tmp_path / "imports"
    settings = Settings(
        data_root=tmp_path,
        vllm_urls=["http://a.test"],
        embedded_model=False,
        adapter_import_dirs=[imports],
    )
    replica = HeldReplica()
    http = httpx.AsyncClient(transport=httpx.MockTransport(replica))
    guard = ProcessGuard(tmp_path)
    engine = VllmReplicaSet(settings, BASE, http, guard, health_http=http)
    catalog = ModelCatalog()
    catalog.add(ModelEntry("base", "base", "vllm", engine.key, None))
    base_dir = write_base(tmp_path / "models" / "base")
    app = create_app(settings)
    app.state.runtime = assemble_runtime(
        settings, http, catalog, {engine.key: engine}, {"base": base_dir}, guard
    )
    await engine.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"
        ) as client:
            registered = await client.post(
                "/v1/adapters",
                json={"path": str(write_adapter(imports / "a")), "base": "base", "suffix": "bot"},
            )
            assert registered.status_code == 201, registered.text
            yield client, replica, registered.json()["id"], catalog, engine
    finally:
        await engine.stop()
        await http.aclose()


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Capital of France?"}]}


async def test_delete_during_a_request_waits_for_it_and_never_reloads(served, tmp_path):
    client, replica, adapter_id, catalog, _ = served
    replica.hold_chats = True
    in_flight = asyncio.create_task(client.post("/v1/chat/completions", json=chat(adapter_id)))
    await asyncio.wait_for(replica.chat_entered.wait(), 5)

    deleting = asyncio.create_task(client.delete(f"/v1/adapters/{adapter_id}"))
    await until(lambda: adapter_id not in catalog)
    # Off the table at once: a new request is 404, and loads nothing.
    late = await client.post("/v1/chat/completions", json=chat(adapter_id))
    assert_openai_error(late, 404, "model_not_found")
    await asyncio.sleep(0)
    assert ("unload", adapter_id) not in replica.calls and not deleting.done()

    replica.answer.set()  # the request in flight gets its answer...
    answered = await in_flight
    assert answered.status_code == 200, answered.text
    deleted = await deleting  # ...and only then is the adapter unloaded
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert replica.calls == [("load", adapter_id), ("chat", adapter_id), ("unload", adapter_id)]
    assert not (tmp_path / "adapters" / adapter_id).exists()


async def test_a_request_that_resolved_the_adapter_before_its_delete_is_404(served):
    client, replica, adapter_id, catalog, engine = served
    entry = catalog.resolve(adapter_id)  # resolved; then the delete runs before it is routed
    deleted = await client.delete(f"/v1/adapters/{adapter_id}")
    assert deleted.status_code == 200
    with pytest.raises(ModelNotFoundError):
        await engine.acquire(entry)
    assert ("load", adapter_id) not in replica.calls
    assert all(r.in_flight == 0 and r.loras.leases(adapter_id) == 0 for r in engine.replicas)
    # An adapter registered again under that id is a new one, and serves.
    again = ModelEntry(adapter_id, "adapter", "vllm", engine.key, entry.weights, parent="base")
    (await engine.acquire(again)).done()
    assert replica.calls[-1] == ("load", adapter_id)


async def test_delete_removes_the_models_merged_from_the_adapter(admin_with_merge):
    client, runtime, adapter_id, merged_id, files = admin_with_merge
    deleted = await client.delete(f"/v1/adapters/{adapter_id}")
    assert deleted.status_code == 200, deleted.text
    assert merged_id not in runtime.catalog and adapter_id not in runtime.catalog
    assert not any(f.exists() for f in files)
    assert runtime.engines["llama.cpp"].released == [merged_id]
    assert_openai_error(
        await client.post("/v1/chat/completions", json=chat(merged_id)), 404, "model_not_found"
    )


@pytest.fixture
async def admin_with_merge(make_gateway, tmp_path):
    """An adapter on fake engines, and a merged model made from it (as a merge leaves it)."""
    imports = tmp_path / "imports"
    client = make_gateway(adapter_import_dirs=[imports])
    runtime = client.app.state.runtime
    registered = await client.post(
        "/v1/adapters",
        json={"path": str(write_adapter(imports / "a")), "base": "base", "suffix": "bot"},
    )
    assert registered.status_code == 201, registered.text
    adapter_id = registered.json()["id"]
    merged_id = f"{adapter_id}:gguf-q8_0"
    runtime.merges.folder.mkdir(parents=True, exist_ok=True)
    files = [runtime.merges.folder / f"{merged_id}{suffix}" for suffix in (".gguf", ".json")]
    for file in files:
        file.write_text("{}")
    runtime.catalog.add(
        ModelEntry(merged_id, "merged", "llama.cpp", "llama.cpp", files[0], parent=adapter_id)
    )
    return client, runtime, adapter_id, merged_id, files
