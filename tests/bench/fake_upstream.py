"""An instant OpenAI-compatible upstream, to measure what the gateway itself adds.

Raw ASGI (no framework) so that the upstream costs as little as possible:
``/health``, ``/v1/models``, and ``/v1/chat/completions`` answering a fixed
completion, or a stream of ``--chunks`` SSE events (with ``--chunks-per-token``, as
many as the request's ``max_tokens``), after ``--latency-ms``.

    python -m tests.bench.fake_upstream --port P [--latency-ms 20] [--chunks 16]
        [--chunk-gap-ms 1] [--chunks-per-token]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvicorn

MODEL = "smollm2-135m-instruct"


def _completion() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
    ).encode()


def _chunk(i: int) -> bytes:
    event = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class FakeUpstream:
    def __init__(
        self, latency_s: float, chunks: int, chunk_gap_s: float, per_token: bool = False
    ) -> None:
        self.latency_s = latency_s
        self.chunks = [_chunk(i) for i in range(chunks)]
        self.chunk_gap_s = chunk_gap_s
        self.per_token = per_token
        self.completion = _completion()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] in ("/health", "/v1/models"):
            await self._send(send, 200, b'{"object":"list","data":[]}')
            return
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if b'"stream": true' in body or b'"stream":true' in body:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            chunks = self.chunks
            if self.per_token:
                chunks = [_chunk(i) for i in range(json.loads(body).get("max_tokens", 16))]
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if self.chunk_gap_s:
                    await asyncio.sleep(self.chunk_gap_s)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        await self._send(send, 200, self.completion)

    @staticmethod
    async def _send(send, status: int, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-gap-ms", type=float, default=0.0)
    parser.add_argument("--chunks-per-token", action="store_true")
    args = parser.parse_args()
    app = FakeUpstream(
        args.latency_ms / 1000, args.chunks, args.chunk_gap_ms / 1000, args.chunks_per_token
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


if __name__ == "__main__":
    main()
