"""Fakes for fast unit tests of routing and error handling (never used in e2e tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.base import EngineState, EngineStatus, Upstream
from gateway.errors import EngineUnavailableError
from gateway.runtime import GatewayRuntime, assemble_runtime
from gateway.settings import Settings
from tests.support.adapter_factory import write_base

SSE_BODY = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Pa"}}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"ris"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def chat_completion(model: str, text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


class ChunkedStream(httpx.AsyncByteStream):
    """A response body that arrives in small pieces, as from a real socket."""

    def __init__(self, body: bytes, size: int = 7) -> None:
        self._pieces = [body[i : i + size] for i in range(0, len(body), size)]

    async def __aiter__(self):  # type: ignore[override]
        for piece in self._pieces:
            yield piece


@dataclass
class FakeEngine:
    key: str
    family: str
    url: str
    up: bool = True

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    loaded: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    async def upstream_for(self, entry: ModelEntry) -> Upstream:
        if not self.up:
            raise EngineUnavailableError("engine restarting", retry_after_s=7)
        if entry.kind == "adapter" and entry.id not in self.loaded:
            self.loaded.append(entry.id)
        return Upstream(self.url)

    async def release(self, entry: ModelEntry) -> None:
        self.released.append(entry.id)

    def ready(self) -> bool:
        return self.up

    def statuses(self) -> list[EngineStatus]:
        state = EngineState.READY if self.up else EngineState.RESTARTING
        return [EngineStatus(self.key, self.family, state)]


@dataclass
class FakeUpstream:
    """An httpx transport standing in for engine servers; records what it was sent."""

    seen: list[httpx.Request] = field(default_factory=list)
    answer: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if self.answer is not None:
            return self.answer(request)
        body = json.loads(request.content)
        if body.get("stream"):
            return httpx.Response(
                200, stream=ChunkedStream(SSE_BODY), headers={"content-type": "text/event-stream"}
            )
        return httpx.Response(200, json=chat_completion(body["model"], "Paris"))


def fake_runtime(settings: Settings, upstream: FakeUpstream) -> GatewayRuntime:
    """Fake engines for two bases; the adapter registry is real, on a tiny base config."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    catalog = ModelCatalog()
    engines = {
        "vllm/base": FakeEngine("vllm/base", "vllm", "http://vllm.test"),
        "llama.cpp": FakeEngine("llama.cpp", "llama.cpp", "http://llama.test"),
    }
    catalog.add(ModelEntry("base", "base", "vllm", "vllm/base", None))
    catalog.add(ModelEntry("base-gguf", "base", "llama.cpp", "llama.cpp", None))
    base_dir = write_base(settings.data_root / "models" / "base")
    return assemble_runtime(settings, http, catalog, engines, {"base": base_dir})  # type: ignore[arg-type]
