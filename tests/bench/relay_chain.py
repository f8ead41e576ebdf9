"""What the relay's chain of coroutines costs a streamed chunk, alone (issue 22).

A model of the per-chunk path without sockets or HTTP: a protocol whose next chunk
"arrives" from the event loop (as ``data_received`` wakes the relay), the engine
answer's generator (``StreamedAnswer.aiter_raw``), the forwarder's relay generator,
and the route's ``send`` of each chunk. Three shapes, in this process's CPU time:

- ``as written``: the chain as the gateway has it;
- ``folded``: the engine answer as an iterator of its own, read by the forwarder's relay;
- ``bare``: the route reading the engine answer directly (no relay generator at all).

    python -m tests.bench.relay_chain [--chunks 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator

import uvloop

_CHUNK = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'


class _Arriving:
    """Chunks that arrive one per loop turn, as a stream's do."""

    def __init__(self, chunks: int) -> None:
        self.pending: list[bytes] = []
        self.complete = False
        self._left = chunks
        self._waiter: asyncio.Future[None] | None = None

    def _arrive(self) -> None:
        if self._left:
            self._left -= 1
            self.pending.append(_CHUNK)
        else:
            self.complete = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        return data

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        loop.call_soon(self._arrive)
        try:
            await self._waiter
        finally:
            self._waiter = None


class _Answer:
    def __init__(self, arriving: _Arriving) -> None:
        self._arriving = arriving

    async def _next_piece(self) -> bytes | None:
        arriving = self._arriving
        while True:
            if arriving.pending:
                return arriving.take()
            if arriving.complete:
                return None
            await arriving.wait()

    async def aiter_raw(self) -> AsyncIterator[bytes]:  # as StreamedAnswer's
        while (piece := await self._next_piece()) is not None:
            yield piece

    def __aiter__(self) -> _Answer:
        return self

    async def __anext__(self) -> bytes:  # folded: no generator of its own
        arriving = self._arriving
        while True:
            if arriving.pending:
                return arriving.take()
            if arriving.complete:
                raise StopAsyncIteration
            await arriving.wait()


async def _relay(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:  # the forwarder's
    try:
        async for piece in pieces:
            yield piece
    finally:
        pass


async def _send(message: dict) -> None:
    pass


async def _route(shape: str, chunks: int) -> None:
    answer = _Answer(_Arriving(chunks))
    pieces = {
        "as written": lambda: _relay(answer.aiter_raw()),
        "folded": lambda: _relay(answer),
        "bare": lambda: answer,
    }[shape]()
    async for piece in pieces:
        await _send({"type": "http.response.body", "body": piece, "more_body": True})


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.relay_chain")
    parser.add_argument("--chunks", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for shape in ("as written", "folded", "bare"):
            started = time.process_time()
            uvloop.run(_route(shape, args.chunks))
            per_chunk = (time.process_time() - started) / args.chunks * 1e6
            print(f"{shape:>10}: {per_chunk:.2f} µs a chunk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
