"""Adapters on llama.cpp: ids, the ``lora`` field, hand-over to a new llama-server, and an
LRU that never stops a server with a request in flight. Processes and the GGUF
converter are fakes whose readiness and progress the tests step by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import pytest

from adapters.registry import RegisterRequest
from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines import llamacpp
from gateway.engines.base import EngineState, Upstream, with_json_member
from gateway.engines.llamacpp import LlamaCppEngine, lora_args
from gateway.engines.llamacpp_lora import ADAPTER_GGUF_FILE, gguf_adapter_id, gguf_alias, lora_field
from gateway.errors import EngineUnavailableError, ModelNotFoundError
from gateway.process_guard import ProcessGuard
from gateway.protocol import ChatCompletionRequest
from gateway.runtime import assemble_runtime
from gateway.settings import Settings
from tests.support.adapter_factory import write_adapter, write_base
from tests.unit.fakes import FakeEngine, FakeUpstream


class FakeProcess:
    """Stands in for SupervisedProcess: ready at once, or when the test says so."""

    auto_ready = True
    crash_on_start = False
    made: list[FakeProcess] = []

    def __init__(self, spec, http, backoff, stop_timeout_s, guard, **_: object) -> None:
        self.spec = spec
        self.state = EngineState.STOPPED
        self.pid = 1000 + len(FakeProcess.made)
        self.restarts = 0
        self.last_error: str | None = None
        self.stopped = False
        self._ready = asyncio.Event()
        FakeProcess.made.append(self)

    @property
    def loras(self) -> list[str]:
        argv = self.spec.argv
        return [Path(argv[i + 1]).parent.name for i, a in enumerate(argv) if a == "--lora"]

    def start(self) -> None:
        self.state = EngineState.STARTING
        if FakeProcess.crash_on_start:  # as llama-server exits on a LoRA it cannot load
            self.state, self.restarts = EngineState.RESTARTING, 1
        elif FakeProcess.auto_ready:
            self.become_ready()

    def become_ready(self) -> None:
        self.state = EngineState.READY
        self._ready.set()

    def ready(self) -> bool:
        return self.state is EngineState.READY

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self.ready()

    def retry_after_s(self) -> float:
        return 1.0

    async def stop(self) -> None:
        self.stopped = True
        self.state = EngineState.STOPPED


@pytest.fixture(autouse=True)
def fake_processes(monkeypatch):
    FakeProcess.made = []
    FakeProcess.auto_ready = True
    FakeProcess.crash_on_start = False
    monkeypatch.setattr(llamacpp, "SupervisedProcess", FakeProcess)


class FakeConverter:
    """Writes adapter.gguf; ``hold`` keeps conversions waiting until ``release``."""

    def __init__(self) -> None:
        self.calls: list[Path] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, guard, adapter_dir: Path, base_dir: Path, log_path: Path) -> Path:
        self.calls.append(adapter_dir)
        await self.gate.wait()
        (adapter_dir / ADAPTER_GGUF_FILE).write_bytes(b"GGUF")
        return adapter_dir / ADAPTER_GGUF_FILE


@pytest.fixture
def converter(monkeypatch) -> FakeConverter:
    fake = FakeConverter()
    monkeypatch.setattr(llamacpp, "convert_adapter", fake)
    return fake


async def settle() -> None:
    """Let the engine's background stops run (each is one task of a step or two)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def until_started(count: int, timeout_s: float = 10) -> FakeProcess:
    """Wait for the ``count``-th process: a start reads its GGUF's template in a thread
    first, so it takes more than a few steps of the loop."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(FakeProcess.made) < count:
        assert asyncio.get_running_loop().time() < deadline, "no process started"
        await asyncio.sleep(0.005)
    return FakeProcess.made[count - 1]


def make_settings(tmp_path: Path, **values: object) -> Settings:
    binary = tmp_path / "llama-server"
    binary.write_text("")
    return Settings(
        data_root=tmp_path / "data",
        llamacpp_server_bin=binary,
        adapter_import_dirs=[tmp_path / "imports"],
        **values,
    )


class Gateway:
    """The real adapter service, forwarder and llama.cpp engine, over fake processes."""

    def __init__(self, tmp_path: Path, vllm: bool = True, **values: object) -> None:
        self.settings = make_settings(tmp_path, vllm_enabled=vllm, **values)
        self.upstream = FakeUpstream()
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.upstream))
        guard = ProcessGuard(self.settings.data_root)
        self.engine = LlamaCppEngine(self.settings, self.http, guard)
        catalog = ModelCatalog()
        engines: dict[str, object] = {"llama.cpp": self.engine}
        base_dir = write_base(self.settings.data_root / "models" / "base")
        gguf_id = "base-gguf" if vllm else "base"
        if vllm:
            engines["vllm/base"] = FakeEngine("vllm/base", "vllm", "http://vllm.test")
            catalog.add(ModelEntry("base", "base", "vllm", "vllm/base", base_dir))
        gguf = ModelEntry(gguf_id, "base", "llama.cpp", "llama.cpp", tmp_path / "base.gguf")
        catalog.add(gguf)
        self.engine.add_base(gguf, "base", base_dir)
        for i in range(3):  # other GGUF models, for the LRU
            other = ModelEntry(f"m{i}", "base", "llama.cpp", "llama.cpp", tmp_path / f"m{i}.gguf")
            catalog.add(other)
            self.engine.add_base(other, None, None)
        self.runtime = assemble_runtime(
            self.settings,
            self.http,
            catalog,
            engines,
            {"base": base_dir},
            guard,  # type: ignore[arg-type]
        )
        self.imports = tmp_path / "imports"

    async def register(self, suffix: str, seed: int = 1) -> str:
        folder = write_adapter(self.imports / suffix, seed=seed)
        request = RegisterRequest(folder=folder, base="base", suffix=suffix)
        return (await self.runtime.adapters.register(request)).id

    async def chat(self, model: str, stream: bool = False, **extra: object):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        if stream:
            body["stream"] = True
        raw = json.dumps(body).encode()
        return await self.runtime.forwarder.forward(
            "/v1/chat/completions", ChatCompletionRequest.model_validate(body), raw
        )

    def sent(self) -> dict:
        return json.loads(self.upstream.seen[-1].content)


# --- the pieces -------------------------------------------------------------------------
def test_lora_field_selects_one_adapter_and_zeroes_the_others():
    assert lora_field(("a", "b", "c"), "b") == (
        b'"lora":[{"id":0,"scale":0.0},{"id":1,"scale":1.0},{"id":2,"scale":0.0}]'
    )
    assert json.loads(b"{" + lora_field(("a", "b"), None) + b"}")["lora"] == [
        {"id": 0, "scale": 0.0},
        {"id": 1, "scale": 0.0},
    ]
    assert lora_field((), None) == b""
    assert lora_args([]) == []
    assert lora_args([Path("/a/x.gguf"), Path("/b/y.gguf")]) == [
        "--lora",
        "/a/x.gguf",
        "--lora",
        "/b/y.gguf",
        "--lora-init-without-apply",
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","messages":[{"role":"user","content":"say \\"lora\\" {}"}]}',
        b'{"model": "m", "stream": true}\n',
        b"{}",
        b' { "model" : "m" }  ',
    ],
)
def test_the_lora_member_is_spliced_into_any_json_object(body):
    member = lora_field(("a", "b"), "a")
    out = with_json_member(body, member)
    assert json.loads(out) == {**json.loads(body), "lora": json.loads(b"{" + member + b"}")["lora"]}


def test_a_clients_own_lora_field_never_reaches_the_engine():
    body = b'{"model":"m","lora":[{"id":1,"scale":9}],"messages":[]}'
    out = json.loads(Upstream("http://x", body_fields=lora_field(("a", "b"), "a")).body_for(body))
    assert out["lora"] == [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]
    assert Upstream("http://x").body_for(body) is body  # other engines: untouched


def test_ids_on_llamacpp_beside_vllm_and_alone():
    adapter = "ft:base:local:bot:ftjob-1"
    assert gguf_adapter_id(adapter, vllm_serves_base=True) == f"{adapter}:gguf"
    assert gguf_adapter_id(adapter, vllm_serves_base=False) == adapter
    merged = f"{adapter}:gguf-q8_0"
    assert gguf_adapter_id(adapter, True) != merged
    assert gguf_alias("bot", True) == "bot-gguf" and gguf_alias("bot", False) == "bot"
    assert gguf_alias("", True) == ""  # checkpoints have no alias


# --- routing and ids ----------------------------------------------------------------------
async def test_beside_vllm_the_adapter_has_a_gguf_twin_with_its_lineage(tmp_path, converter):
    gw = Gateway(tmp_path)
    adapter = await gw.register("bot")
    catalog = gw.runtime.catalog
    assert catalog.resolve(adapter).engine == "vllm" and catalog.resolve("bot").id == adapter
    twin = catalog.resolve(f"{adapter}:gguf")
    assert catalog.resolve("bot-gguf") is twin
    described = twin.to_openai()
    assert described["engine"] == "llama.cpp" and described["kind"] == "adapter"
    assert described["parent"] == "base-gguf" and described["root"] == "base"
    assert described["adapter"] == adapter and described["alias"] == "bot-gguf"
    assert converter.calls == []  # converted on first use on llama.cpp, not before

    await gw.chat("bot-gguf")
    assert converter.calls == [gw.settings.adapters_dir / adapter]
    assert gw.sent()["lora"] == [{"id": 0, "scale": 1.0}]
    assert gw.sent()["model"] == f"{adapter}:gguf"
    await gw.chat("base-gguf")
    assert gw.sent()["lora"] == [{"id": 0, "scale": 0.0}]  # the base: explicit zero
    await gw.chat(adapter)  # the vLLM row is untouched
    assert "lora" not in gw.sent()
    assert gw.upstream.seen[-1].url.host == "vllm.test"


async def test_with_vllm_off_the_adapter_answers_on_llamacpp_under_its_own_id(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)
    adapter = await gw.register("bot")
    entry = gw.runtime.catalog.resolve(adapter)
    assert entry.engine == "llama.cpp" and entry.parent == "base" and "adapter" not in entry.extra
    assert gw.runtime.catalog.resolve("bot") is entry
    await gw.runtime.adapters.preload(adapter)  # what a job does before it says succeeded
    assert (gw.settings.adapters_dir / adapter / ADAPTER_GGUF_FILE).is_file()
    reply = await gw.chat("bot", stream=True)
    assert [chunk async for chunk in reply.chunks]
    assert gw.sent()["lora"] == [{"id": 0, "scale": 1.0}]
    assert len(FakeProcess.made) == 1  # the first start already had it: no hand-over


async def test_several_adapters_each_pick_their_own_scale(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)
    ids = [await gw.register(name, seed=n) for n, name in enumerate(("a", "b", "c"))]
    for adapter in ids:
        await gw.runtime.adapters.preload(adapter)
    server = FakeProcess.made[-1]
    assert server.loras == ids  # the last process holds all three, in order
    for position, name in enumerate(("a", "b", "c")):
        await gw.chat(name)
        scales = [item["scale"] for item in gw.sent()["lora"]]
        assert scales == [1.0 if i == position else 0.0 for i in range(3)]


# --- hand-over ----------------------------------------------------------------------------
async def test_a_new_adapter_hands_over_without_failing_a_live_stream(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)
    first = await gw.register("a")
    await gw.runtime.adapters.preload(first)
    old = FakeProcess.made[-1]
    live = await gw.chat("a", stream=True)  # a stream in flight on the old process

    second = await gw.register("b", seed=2)
    FakeProcess.auto_ready = False
    loading = asyncio.create_task(gw.chat("b"))
    fresh = await until_started(len(FakeProcess.made) + 1)
    assert fresh is not old and fresh.loras == [first, second]
    # Until the new process is healthy, everything else still goes to the old one.
    await gw.chat("base")
    assert gw.upstream.seen[-1].url.port == old.spec.port
    fresh.become_ready()
    await loading
    assert gw.upstream.seen[-1].url.port == fresh.spec.port
    assert gw.sent()["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}]
    await settle()
    assert not old.stopped  # its stream is still being relayed
    statuses = {s.pid: s for s in gw.engine.statuses()}
    assert statuses[old.pid].detail == "draining" and statuses[old.pid].models == ()
    assert statuses[fresh.pid].adapters == (first, second)

    assert [chunk async for chunk in live.chunks]  # the stream ends whole
    await settle()
    assert old.stopped and not fresh.stopped
    assert [s.pid for s in gw.engine.statuses()] == [fresh.pid]


async def test_a_process_that_never_gets_healthy_leaves_the_old_one_serving(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False, llamacpp_startup_timeout_s=0.01)
    await gw.runtime.adapters.preload(await gw.register("a"))
    old = FakeProcess.made[-1]
    second = await gw.register("b", seed=2)
    FakeProcess.auto_ready = False
    with pytest.raises(EngineUnavailableError, match="did not start"):
        await gw.runtime.adapters.preload(second)
    assert FakeProcess.made[-1].stopped and not old.stopped
    # Its file is dropped (llama-server may be unable to load it): converted afresh next time.
    assert not (gw.settings.adapters_dir / second / ADAPTER_GGUF_FILE).exists()
    await gw.chat("a")
    assert gw.upstream.seen[-1].url.port == old.spec.port


async def test_a_process_that_exits_while_starting_fails_the_hand_over_at_once(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)  # the start-up timeout is 120 s: not waited out
    await gw.runtime.adapters.preload(await gw.register("a"))
    old = FakeProcess.made[-1]
    second = await gw.register("b", seed=2)
    FakeProcess.crash_on_start = True
    with pytest.raises(EngineUnavailableError, match="did not start"):
        await asyncio.wait_for(gw.runtime.adapters.preload(second), 5)
    assert FakeProcess.made[-1].stopped and not old.stopped


async def test_delete_stops_serving_hands_over_and_removes_the_gguf(tmp_path, converter):
    gw = Gateway(tmp_path)
    keep = await gw.register("keep")
    doomed = await gw.register("doomed", seed=2)
    await gw.chat("keep-gguf")
    await gw.chat("doomed-gguf")
    before = FakeProcess.made[-1]
    assert before.loras == [keep, doomed]
    folder = gw.settings.adapters_dir / doomed
    assert (folder / ADAPTER_GGUF_FILE).is_file()

    await gw.runtime.adapters.remove(f"{doomed}:gguf")  # either id deletes the adapter
    for gone in (doomed, f"{doomed}:gguf", "doomed-gguf"):
        with pytest.raises(ModelNotFoundError):
            gw.runtime.catalog.resolve(gone)
    assert not folder.exists()
    assert FakeProcess.made[-1].loras == [keep]
    await settle()
    assert before.stopped
    await gw.chat("keep-gguf")
    assert gw.sent()["lora"] == [{"id": 0, "scale": 1.0}]


async def test_a_conversion_outlives_a_client_that_left(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)
    adapter = await gw.register("a")
    converter.gate.clear()
    leaving = asyncio.create_task(gw.chat("a"))
    await settle()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    staying = asyncio.create_task(gw.chat("a"))
    await settle()
    converter.gate.set()
    await staying
    assert len(converter.calls) == 1
    assert (gw.settings.adapters_dir / adapter / ADAPTER_GGUF_FILE).is_file()


async def test_a_client_leaving_during_a_hand_over_stops_the_new_process(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)
    await gw.runtime.adapters.preload(await gw.register("a"))
    old = FakeProcess.made[-1]
    await gw.register("b", seed=2)
    FakeProcess.auto_ready = False
    leaving = asyncio.create_task(gw.chat("b"))
    fresh = await until_started(len(FakeProcess.made) + 1)
    assert fresh is not old and not fresh.stopped
    leaving.cancel()  # as the client-disconnect watch cancels the request
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert fresh.stopped and not old.stopped  # no orphan llama-server
    await gw.chat("a")
    assert gw.upstream.seen[-1].url.port == old.spec.port


async def test_a_request_resolved_just_before_a_delete_finds_no_model(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)
    await gw.register("keep")
    doomed = await gw.register("doomed", seed=2)
    await gw.chat("keep")
    served = FakeProcess.made[-1]
    entry = gw.runtime.catalog.resolve(doomed)
    await gw.runtime.adapters.remove(doomed)
    made = len(FakeProcess.made)
    with pytest.raises(ModelNotFoundError):
        await gw.engine.acquire(entry)
    assert len(FakeProcess.made) == made and not served.stopped  # no restart without it


async def test_a_delete_during_the_conversion_answers_model_not_found(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False)
    doomed = await gw.register("doomed")
    converter.gate.clear()
    waiting = asyncio.create_task(gw.chat(doomed))
    await settle()
    assert converter.calls  # converting
    await gw.runtime.adapters.remove(doomed)
    with pytest.raises(ModelNotFoundError):  # not a CancelledError, which reads as a shutdown
        await waiting
    assert not waiting.cancelled()


# --- the LRU ------------------------------------------------------------------------------
async def test_the_lru_skips_a_server_with_a_live_stream(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False, llamacpp_max_running=2)
    streaming = await gw.chat("m0", stream=True)  # oldest, but busy
    await gw.chat("m1")  # idle
    await gw.chat("m2")  # past the limit: m1 goes, not m0
    await settle()
    by_model = {p.spec.name: p for p in FakeProcess.made}
    assert by_model["llama.cpp/m1"].stopped
    assert not by_model["llama.cpp/m0"].stopped
    assert [chunk async for chunk in streaming.chunks]


async def test_when_every_server_streams_the_first_to_fall_idle_stops(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False, llamacpp_max_running=1)
    first = await gw.chat("m0", stream=True)
    second = await gw.chat("m1", stream=True)  # over the limit, m0 still streaming
    await settle()
    by_model = {p.spec.name: p for p in FakeProcess.made}
    assert not by_model["llama.cpp/m0"].stopped and not by_model["llama.cpp/m1"].stopped
    assert len(gw.engine.statuses()) == 2

    assert [chunk async for chunk in first.chunks]
    await settle()
    assert by_model["llama.cpp/m0"].stopped and not by_model["llama.cpp/m1"].stopped
    assert [chunk async for chunk in second.chunks]
    await settle()
    assert not by_model["llama.cpp/m1"].stopped  # within the limit now


async def test_a_request_waiting_for_a_start_is_not_evicted(tmp_path, converter):
    gw = Gateway(tmp_path, vllm=False, llamacpp_max_running=1)
    FakeProcess.auto_ready = False
    waiting = asyncio.create_task(gw.chat("m0"))
    await until_started(1)
    FakeProcess.auto_ready = True
    await gw.chat("m1")  # m0 is starting with a request leased on it: m1 goes once idle
    await settle()
    starting, other = FakeProcess.made
    assert other.stopped and not starting.stopped
    starting.become_ready()
    await waiting
    assert gw.upstream.seen[-1].url.port == starting.spec.port


async def test_with_vllm_off_the_gguf_answers_to_the_base_id(tmp_path):
    from gateway.base_models import base_model_specs
    from gateway.runtime import _EngineSetBuilder
    from gateway.settings import EMBEDDED_MODEL_ID

    settings = Settings(data_root=tmp_path, vllm_enabled=False)
    catalog = ModelCatalog()
    async with httpx.AsyncClient() as http:
        builder = _EngineSetBuilder(settings, http, catalog, ProcessGuard(tmp_path))
        for spec in base_model_specs(settings):
            builder.add_base(spec)
    entry = catalog.resolve(EMBEDDED_MODEL_ID)
    assert entry.engine == "llama.cpp" and list(builder.engines) == ["llama.cpp"]
    assert catalog.resolve(f"{EMBEDDED_MODEL_ID}-gguf") is entry  # the documented id, an alias
    engine = builder.engines["llama.cpp"]
    assert engine.gguf_base_of(EMBEDDED_MODEL_ID) is entry  # adapters of the base run on it


async def test_a_new_server_reads_its_gguf_template_off_the_event_loop(tmp_path, monkeypatch):
    """Reading a GGUF's metadata takes seconds for a large file: never on the loop."""
    import threading

    from gateway.engines import chat_templates

    readers: list[threading.Thread] = []

    def slow_read(gguf: Path) -> tuple[None, dict]:
        readers.append(threading.current_thread())
        return None, {}

    monkeypatch.setattr(chat_templates, "gguf_template", slow_read)
    gateway = Gateway(tmp_path, vllm=False)
    await gateway.chat("m0")
    assert readers and all(t is not threading.main_thread() for t in readers)
    assert "--jinja" in FakeProcess.made[-1].spec.argv  # the choice reached the server's argv
