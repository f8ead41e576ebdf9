"""Opens one streamed engine answer on a connection of its own, parsed in C.

A streamed answer is one small HTTP chunk per token. Through httpx each chunk
costs the gateway about a millisecond of CPU (two reads per event, each under
a cancel scope, and a parser in Python). On a machine whose cores the engine
fills, that millisecond comes out of the engine's decode. Here the chunks
arrive in ``data_received`` (an asyncio protocol, uvloop under the gateway),
httptools (uvicorn's own HTTP parser) takes the chunk framing off, and the
relay wakes once for all that has arrived since it last ran.

Requests without a stream keep the pooled httpx client: they are one read.
The answer object has the few members of ``httpx.Response`` the forwarder
uses, so the two paths share the failover and error handling.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

# Past this much unread answer, the engine is paused (TCP back-pressure) until
# the client catches up.
_HIGH_WATER_BYTES = 1024 * 1024


class StreamError(Exception):
    """The engine's answer did not come, or stopped coming."""


class StreamConnectError(StreamError):
    """Nobody listens there: the connection was refused."""


class StreamDroppedError(StreamError):
    """The engine closed the connection before the whole answer."""


class StreamTimeoutError(StreamError):
    """No connection, or nothing sent, within the timeout."""


class _AnswerProtocol(asyncio.Protocol):
    """Collects one HTTP response: headers once, then the body as it comes."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.lost: Exception | None = None
        self.framed = False  # content-length or chunked: the end is known without EOF
        self.pending: list[bytes] = []
        self._pending_bytes = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.lost = StreamDroppedError(f"unreadable answer: {error}")
            self.transport.close()  # type: ignore[union-attr]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete and self.lost is None:
            if self.headers_done and not self.framed and exc is None:
                self.complete = True  # a body that ends with the connection
            else:
                self.lost = StreamDroppedError(str(exc or "connection closed"))
        self._wake()

    # --- httptools callbacks ----------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self.headers[key] = value.decode("latin-1")
        if key in ("content-length", "transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.pending.append(body)
        self._pending_bytes += len(body)
        if self._pending_bytes > _HIGH_WATER_BYTES and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.complete = True

    # --- for the reader ---------------------------------------------------
    @property
    def status(self) -> int:
        return self._parser.get_status_code()

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        self._pending_bytes = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    async def wait(self, timeout_s: float) -> None:
        """Until something happens: data, the end, or the connection lost."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self._time_out)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _time_out(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(StreamTimeoutError())

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StreamedAnswer:
    """An engine's answer as it arrives, with the members of ``httpx.Response`` that the
    forwarder uses: ``status_code``, ``headers``, ``aread``, ``aiter_raw``, ``aclose``."""

    def __init__(self, protocol: _AnswerProtocol, read_timeout_s: float) -> None:
        self._protocol = protocol
        self._read_timeout_s = read_timeout_s
        self.status_code = protocol.status
        self.headers = protocol.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body, in pieces: everything that arrived since the last one."""
        protocol = self._protocol
        while True:
            if protocol.pending:
                yield protocol.take()
            elif protocol.complete:
                return
            elif protocol.lost is not None:
                raise protocol.lost
            else:
                await protocol.wait(self._read_timeout_s)

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.aiter_raw()])

    async def aclose(self) -> None:
        """Closing mid-answer tells the engine the client is gone: it stops generating."""
        if self._protocol.transport is not None:
            self._protocol.transport.close()


async def open_stream(
    url: str,
    body: bytes,
    headers: dict[str, str],
    connect_timeout_s: float,
    read_timeout_s: float,
) -> StreamedAnswer:
    """POST ``body`` to ``url`` and return once the answer's headers are in."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                _AnswerProtocol,
                parts.hostname,
                port,
                ssl=ssl.create_default_context() if secure else None,
            ),
            connect_timeout_s,
        )
    except TimeoutError as error:
        raise StreamTimeoutError("no connection within the timeout") from error
    except OSError as error:
        raise StreamConnectError(str(error)) from error
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [
        f"POST {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
        "",
        "",
    ]
    protocol.transport.write("\r\n".join(head).encode("latin-1") + body)
    try:
        while not protocol.headers_done:
            if protocol.lost is not None:
                raise protocol.lost
            await protocol.wait(read_timeout_s)
    except BaseException:
        protocol.transport.close()
        raise
    return StreamedAnswer(protocol, read_timeout_s)
