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
import base64
import ssl
from collections.abc import AsyncIterator
from urllib.parse import SplitResult, unquote, urlsplit

import httptools
import httpx

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
            if self.headers_done and not self._framed() and exc is None:
                self.complete = True  # a body that ends with the connection
            else:
                self.lost = StreamDroppedError(str(exc or "connection closed"))
        self._wake()

    # --- httptools callbacks ----------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.status < 200:  # an interim answer (100, 103): the real one follows
            self.headers.clear()
            return
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.pending.append(body)
        self._pending_bytes += len(body)
        if self._pending_bytes > _HIGH_WATER_BYTES and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True

    def _framed(self) -> bool:
        """A length or chunks: the body's end is known without the connection's."""
        return "content-length" in self.headers or "transfer-encoding" in self.headers

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
        """The body, in pieces: everything that arrived since the last one. The
        connection is closed however the reading ends."""
        protocol = self._protocol
        try:
            while True:
                if protocol.pending:
                    yield protocol.take()
                elif protocol.complete:
                    return
                elif protocol.lost is not None:
                    raise protocol.lost
                else:
                    await protocol.wait(self._read_timeout_s)
        finally:
            await self.aclose()

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
    tls: ssl.SSLContext | None = None,
) -> StreamedAnswer:
    """POST ``body`` to ``url`` and return once the answer's headers are in. For https,
    ``tls`` is best made once (httpx's context: the CAs its other requests trust);
    loading the CAs takes milliseconds."""
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
                ssl=(tls or httpx.create_ssl_context()) if secure else None,
            ),
            connect_timeout_s,
        )
    except TimeoutError as error:
        raise StreamTimeoutError("no connection within the timeout") from error
    except OSError as error:
        raise StreamConnectError(str(error)) from error
    try:
        if protocol.lost is not None or protocol.transport.is_closing():
            raise protocol.lost or StreamDroppedError("connection closed")
        protocol.transport.write(_request_head(parts, len(body), headers) + body)
        while not protocol.headers_done:
            if protocol.lost is not None:
                raise protocol.lost
            await protocol.wait(read_timeout_s)
    except BaseException:
        protocol.transport.close()
        raise
    return StreamedAnswer(protocol, read_timeout_s)


def _request_head(parts: SplitResult, length: int, headers: dict[str, str]) -> bytes:
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    lines = [
        f"POST {target} HTTP/1.1",
        f"Host: {host}" + (f":{parts.port}" if parts.port else ""),
        f"Content-Length: {length}",
    ]
    if parts.username is not None:  # http://user:password@host, as httpx sends it
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(credentials.encode()).decode())
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
