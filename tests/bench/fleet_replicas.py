"""Fake vLLM replicas serving LoRA adapters over HTTP, for the fleet benchmark.

Each behaves as ``fleet_model`` says (batches bounded by ``max_loras`` distinct
adapters, steps that grow with them, a load cost per adapter) and speaks the
routes the gateway uses: ``/health``, ``/v1/load_lora_adapter``,
``/v1/unload_lora_adapter`` and ``/v1/chat/completions`` (an adapter that is not
loaded is refused, as vLLM does). All of them run in one process, on one port each:

    python -m tests.bench.fleet_replicas --ports 8001,8002 --shape '{"max_loras": 4}'
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvicorn

from tests.bench.fleet_model import BatchingEngine, FleetShape

_COMPLETION = {
    "id": "chatcmpl-fleet",
    "object": "chat.completion",
    "created": 1,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
}


class FakeLoraReplica:
    def __init__(self, shape: FleetShape, base: str) -> None:
        self.shape = shape
        self.base = base
        self.engine = BatchingEngine(shape)
        self.loaded: set[str] = set()

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        handler = {
            "/health": self._health,
            "/v1/load_lora_adapter": self._load,
            "/v1/unload_lora_adapter": self._unload,
            "/v1/chat/completions": self._chat,
        }.get(scope["path"])
        status, payload = await handler(json.loads(body) if body else {}) if handler else (404, {})
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _health(self, _: dict) -> tuple[int, dict]:
        return 200, {}

    async def _load(self, request: dict) -> tuple[int, dict]:
        await asyncio.sleep(self.shape.load_s)
        self.loaded.add(request["lora_name"])
        return 200, {"message": "Success"}

    async def _unload(self, request: dict) -> tuple[int, dict]:
        self.loaded.discard(request["lora_name"])
        return 200, {"message": "Success"}

    async def _chat(self, request: dict) -> tuple[int, dict]:
        model = request.get("model")
        if model != self.base and model not in self.loaded:
            return 404, {"error": {"message": f"The model `{model}` does not exist."}}
        done = asyncio.get_running_loop().create_future()
        self.engine.queue.append((done, model))
        self._step()
        await done
        return 200, {**_COMPLETION, "model": model}

    def _step(self) -> None:
        step = self.engine.next_batch()
        if step is not None:
            batch, duration = step
            asyncio.get_running_loop().call_later(duration, self._finish, batch)

    def _finish(self, batch: list) -> None:
        self.engine.busy = False
        for done, _ in batch:
            if not done.done():
                done.set_result(None)
        self._step()


async def serve(ports: list[int], shape: FleetShape, base: str) -> None:
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                FakeLoraReplica(shape, base),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        for port in ports
    ]
    for server in servers:
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    await asyncio.gather(*(s.serve() for s in servers))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True)
    parser.add_argument("--shape", default="{}")
    parser.add_argument("--base", default="fleet-base")
    args = parser.parse_args()
    shape = FleetShape(**json.loads(args.shape))
    ports = [int(p) for p in args.ports.split(",")]
    try:
        import uvloop

        uvloop.run(serve(ports, shape, args.base))
    except ImportError:
        asyncio.run(serve(ports, shape, args.base))


if __name__ == "__main__":
    main()
