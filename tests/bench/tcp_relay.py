"""The least a hop can add: a bare TCP relay in front of an upstream, on uvloop.

Each client connection gets its own upstream connection and the bytes go through
as they come, both ways: no HTTP parsing, no routing, nothing a gateway does. Its
added latency at c=1 is the floor for any proxy on the machine it runs on: a
process woken for the request and once more for the answer, two more trips
through the loopback.

    python -m tests.bench.tcp_relay --port P --upstream-port U
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what it receives goes to ``peer``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.early: list[bytes] = []  # bytes that came before the other side connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def _serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()

    class Client(_Pipe):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            loop.create_task(self._connect())

        async def _connect(self) -> None:
            _, upstream = await loop.create_connection(_Pipe, "127.0.0.1", upstream_port)
            upstream.peer, self.peer = self, upstream
            for data in self.early:
                upstream.transport.write(data)  # type: ignore[union-attr]
            self.early.clear()

    server = await loop.create_server(Client, "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.tcp_relay")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(_serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()
