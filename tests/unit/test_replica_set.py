"""A base model's vLLM replica set over fake replica servers: affinity, failover through the
gateway, waiting for a replica, rejoining with its adapters, clear adapter-load errors; and
a managed replica's restart, ready only once its adapters are back."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import EngineState
from gateway.engines.lora_slots import LoraSlots
from gateway.engines.vllm import VllmReplicaSet
from gateway.engines.vllm_replicas import ManagedReplica
from gateway.errors import AdapterLoadError, EngineUnavailableError
from gateway.process_guard import ProcessGuard
from gateway.runtime import assemble_runtime
from gateway.settings import BaseModelSpec, Settings
from tests.support.adapter_factory import write_base
from tests.unit.fakes import chat_completion

BASE = BaseModelSpec(id="base", hf_dir=Path("/unused"))
URLS = ["http://a.test", "http://b.test"]


@dataclass
class FakeReplicas:
    """vLLM servers by host: their state, the adapters they loaded, the requests they got."""

    down: set[str] = field(default_factory=set)
    refuse_loads: set[str] = field(default_factory=set)
    loads: list[tuple[str, str, str]] = field(default_factory=list)
    chats: list[str] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(request.content) if request.content else {}
        if request.url.path == "/v1/load_lora_adapter":
            if host in self.refuse_loads:
                return httpx.Response(
                    400, json={"error": {"message": "No adapter found at the path."}}
                )
            self.loads.append((host, body["lora_name"], body["lora_path"]))
            return httpx.Response(200, text="Success")
        if request.url.path == "/v1/unload_lora_adapter":
            return httpx.Response(200, text="Success")
        self.chats.append(host)
        return httpx.Response(200, json=chat_completion(body["model"], "Paris"))


def adapter(name: str, folder: Path) -> ModelEntry:
    return ModelEntry(name, "adapter", "vllm", "vllm/base", folder, parent="base", root="base")


def make_set(tmp_path, replicas: FakeReplicas, **settings: object) -> VllmReplicaSet:
    values = {"data_root": tmp_path, "vllm_urls": URLS, "embedded_model": False, **settings}
    http = httpx.AsyncClient(transport=httpx.MockTransport(replicas))
    return VllmReplicaSet(Settings(**values), BASE, http, ProcessGuard(tmp_path), health_http=http)


async def test_adapter_requests_stay_on_their_replica_and_the_base_uses_both(tmp_path):
    fakes = FakeReplicas()
    engine = make_set(tmp_path, fakes)
    await engine.start()
    try:
        x = adapter("x", tmp_path / "adapters" / "x")
        holders = set()
        for _ in range(5):
            lease = await engine.acquire(x)
            holders.add(lease.replica)
            lease.done()
        assert len(holders) == 1 and len(fakes.loads) == 1  # loaded once, on one replica
        base = ModelEntry("base", "base", "vllm", "vllm/base", None)
        busy = await engine.acquire(base)
        other = await engine.acquire(base)  # least loaded: not the busy one
        assert busy.replica != other.replica
        busy.done(), other.done()
        statuses = {s.name: s for s in engine.statuses()}
        assert statuses[holders.pop()].adapters == ("x",)
    finally:
        await engine.stop()


async def test_an_unreachable_replica_is_taken_out_and_rejoins_with_its_adapters(tmp_path):
    fakes = FakeReplicas()
    engine = make_set(tmp_path, fakes)
    await engine.start()
    try:
        x = adapter("x", tmp_path / "adapters" / "x")
        lease = await engine.acquire(x)
        home = lease.replica
        lease.done()
        host = home.split("//")[1]
        fakes.down.add(host)
        engine.report_unreachable(home)
        moved = await engine.acquire(x)  # loads x on the other replica
        assert moved.replica != home
        moved.done()
        assert {s.name: s.state.value for s in engine.statuses()}[home] == "unreachable"
        fakes.down.clear()
        await engine.refresh()  # its health check passes again
        assert {s.name: s.state.value for s in engine.statuses()}[home] == "ready"
        assert [(h, n) for h, n, _ in fakes.loads].count((host, "x")) == 2  # reloaded on rejoin
        back = await engine.acquire(x)
        assert back.replica == home  # affinity again: the home holds x
        back.done()
    finally:
        await engine.stop()


async def test_a_request_waits_for_a_replica_that_is_starting(tmp_path):
    fakes = FakeReplicas(down={"a.test", "b.test"})
    engine = make_set(tmp_path, fakes, vllm_health_interval_s=0.05, engine_wait_s=10)
    await engine.start()
    try:
        base = ModelEntry("base", "base", "vllm", "vllm/base", None)
        waiting = asyncio.create_task(engine.acquire(base))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        fakes.down.discard("b.test")
        lease = await asyncio.wait_for(waiting, 5)
        assert lease.replica == "vllm/base/http://b.test"
    finally:
        await engine.stop()


async def test_a_replica_lost_after_serving_answers_503_when_none_is_left(tmp_path):
    fakes = FakeReplicas()
    engine = make_set(tmp_path, fakes, vllm_urls=URLS[:1], engine_wait_s=5)
    await engine.start()
    try:
        engine.report_unreachable("vllm/base/http://a.test")
        with pytest.raises(EngineUnavailableError) as unavailable:
            await engine.acquire(ModelEntry("base", "base", "vllm", "vllm/base", None))
        assert "vllm/base/http://a.test unreachable" in unavailable.value.message
    finally:
        await engine.stop()


async def test_an_adapter_a_replica_cannot_load_names_the_replica_and_the_path(tmp_path):
    fakes = FakeReplicas(refuse_loads={"a.test", "b.test"})
    engine = make_set(tmp_path, fakes, vllm_remote_adapters_dir="/shared/adapters")
    await engine.start()
    try:
        with pytest.raises(AdapterLoadError) as refused:
            await engine.acquire(adapter("x", tmp_path / "adapters" / "x"))
        message = refused.value.message
        assert "vllm/base/http://" in message and "/shared/adapters/x" in message
        assert refused.value.status_code == 500 and refused.value.code == "adapter_load_failed"
        fakes.refuse_loads.discard("b.test")  # one replica sees the folder: it serves
        lease = await engine.acquire(adapter("x", tmp_path / "adapters" / "x"))
        assert lease.replica == "vllm/base/http://b.test"
        assert fakes.loads == [("b.test", "x", "/shared/adapters/x")]
    finally:
        await engine.stop()


async def test_a_request_that_cannot_reach_its_replica_is_answered_by_another(tmp_path):
    fakes = FakeReplicas()
    settings = Settings(data_root=tmp_path, vllm_urls=URLS, embedded_model=False)
    http = httpx.AsyncClient(transport=httpx.MockTransport(fakes))
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
            fakes.down.add("a.test")  # dies after its last health check
            chat = {"model": "base", "messages": [{"role": "user", "content": "Hi"}]}
            for _ in range(4):
                answer = await client.post("/v1/chat/completions", json=chat)
                assert answer.status_code == 200, answer.text
            assert fakes.chats == ["b.test"] * 4
            models = (await client.get("/v1/models")).json()["data"]
            replicas = {r["name"]: r["state"] for r in models[0]["replicas"]}
            assert replicas == {
                "vllm/base/http://a.test": "unreachable",
                "vllm/base/http://b.test": "ready",
            }
            metrics = (await client.get("/metrics")).text
            assert (
                'tunegate_replica_state{engine="vllm/base/http://a.test",state="unreachable"} 1.0'
                in metrics
            )
    finally:
        await engine.stop()


async def test_a_request_waits_no_longer_than_the_engine_wait_setting(tmp_path):
    fakes = FakeReplicas(down={"a.test", "b.test"})
    engine = make_set(tmp_path, fakes, engine_wait_s=0.3)
    await engine.start()
    try:
        with pytest.raises(EngineUnavailableError) as unavailable:
            await engine.acquire(ModelEntry("base", "base", "vllm", "vllm/base", None))
        assert unavailable.value.status_code == 503
        assert unavailable.value.headers()["Retry-After"] == "5"
    finally:
        await engine.stop()


@dataclass
class StubProcess:
    """A supervised vLLM process as its replica sees it: a state, a URL, a restart count."""

    state: EngineState = EngineState.STARTING
    restarts: int = 0
    pid: int | None = 4242
    last_error: str | None = None

    @dataclass
    class Spec:
        base_url: str = "http://a.test"

    spec: Spec = field(default_factory=Spec)

    def ready(self) -> bool:
        return self.state is EngineState.READY


class FakeVllmProcess:
    """A vLLM process's health and adapter routes: loads wait for ``gate``; a dead one
    refuses."""

    def __init__(self) -> None:
        self.alive = True
        self.gate = asyncio.Event()
        self.gate.set()
        self.loads: list[str] = []
        self.unloads: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/load_lora_adapter":
            await self.gate.wait()
        if not self.alive:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200)
        name = json.loads(request.content)["lora_name"]
        kind = self.loads if request.url.path == "/v1/load_lora_adapter" else self.unloads
        kind.append(name)
        return httpx.Response(200, text="Success")


def replica_of(process: StubProcess, http: httpx.AsyncClient) -> ManagedReplica:
    return ManagedReplica("vllm/base/0", "base", LoraSlots(http, 4), lambda _: process)


async def restart(
    replica: ManagedReplica, process: StubProcess, vllm: FakeVllmProcess
) -> asyncio.Task[None]:
    """It is killed, and its supervisor has it READY again; the reload waits on
    ``vllm.gate``. Returns the reload's task, its first load under way."""
    for state in (EngineState.RESTARTING, EngineState.READY):
        process.state, process.restarts = state, 1
        replica.process_state_changed(state)
    vllm.loads.clear()
    vllm.gate.clear()
    reloading = asyncio.create_task(replica.process_ready())
    await asyncio.sleep(0.01)
    return reloading


async def restarted_with(tmp_path, vllm: FakeVllmProcess, http, names):  # type: ignore[no-untyped-def]
    """A replica that held ``names``, restarted as ``restart`` leaves it. Returns the
    replica, its process, the reload's task."""
    process = StubProcess(state=EngineState.READY)
    replica = replica_of(process, http)
    await replica.process_ready()
    for name in names:
        await replica.loras.ensure_loaded(replica.upstream, name, tmp_path / name)
    return replica, process, await restart(replica, process, vllm)


async def test_a_restarted_replica_is_ready_only_once_its_adapters_are_back(tmp_path):
    """Between the process answering and its adapters' reload, the replica is neither routed
    to nor reported ready: "ready" means it holds again what it held before the crash."""
    vllm = FakeVllmProcess()
    process = StubProcess()
    async with httpx.AsyncClient(transport=httpx.MockTransport(vllm)) as http:
        replica = replica_of(process, http)
        process.state = EngineState.READY
        replica.process_state_changed(EngineState.READY)
        assert not replica.serving() and replica.status().state is EngineState.STARTING
        await replica.process_ready()  # a first start has nothing to reload
        assert replica.serving() and replica.status().state is EngineState.READY

        await replica.loras.ensure_loaded(replica.upstream, "x", tmp_path / "x")
        reloading = await restart(replica, process, vllm)
        assert not replica.serving()
        assert replica.status().state is EngineState.RESTARTING
        await replica.check(http)  # a health round meanwhile does not route to it early
        assert not replica.serving()
        vllm.gate.set()
        await reloading
        assert replica.serving() and replica.status().state is EngineState.READY
        assert replica.status().adapters == ("x",)


async def test_a_replica_that_dies_while_reloading_gets_all_its_adapters_back_at_its_next_start(
    tmp_path,
):
    vllm = FakeVllmProcess()
    async with httpx.AsyncClient(transport=httpx.MockTransport(vllm)) as http:
        replica, process, reloading = await restarted_with(tmp_path, vllm, http, ["x", "y"])
        vllm.alive = False  # it dies: x's load, then y's, are refused
        vllm.gate.set()
        await reloading
        # Its supervisor sees the exit once the on-ready hook has returned.
        process.state = EngineState.RESTARTING
        replica.process_state_changed(EngineState.RESTARTING)
        assert not replica.serving()

        vllm.alive = True
        process.state = EngineState.READY
        replica.process_state_changed(EngineState.READY)
        assert not replica.serving()
        await replica.process_ready()
        assert vllm.loads == ["x", "y"]  # both, into the new process
        assert replica.serving() and set(replica.status().adapters) == {"x", "y"}


async def test_an_adapter_deleted_while_its_replica_reloads_is_not_loaded_back(tmp_path):
    vllm = FakeVllmProcess()
    async with httpx.AsyncClient(transport=httpx.MockTransport(vllm)) as http:
        replica, _, reloading = await restarted_with(tmp_path, vllm, http, ["x", "y"])
        retiring = [asyncio.create_task(replica.retire_adapter(name)) for name in ("x", "y")]
        await asyncio.sleep(0.01)
        vllm.gate.set()
        await asyncio.gather(reloading, *retiring)
        assert vllm.loads == ["x"]  # y's turn came after its delete
        assert vllm.unloads == ["x"]  # x's load was in flight: unloaded once it ended
        assert replica.serving() and replica.status().adapters == ()
