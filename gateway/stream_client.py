"""Opens one streamed engine answer on a connection of its own, parsed in C.

A streamed answer is one small HTTP chunk per token. Through httpx each chunk
costs the gateway about a millisecond of CPU (two reads per event, each under
a cancel scope, and a parser in Python). On a machine whose cores the engine
fills, that millisecond comes out of the engine's decode. Here the chunks
arrive in ``data_received`` (an asyncio protocol, uvloop under the gateway),
httptools (uvicorn's own HTTP parser) takes the chunk framing off, and the
relay wakes once for all that has arrived since it last ran.

Answers without a stream come the same way (``UpstreamClient``), over
connections kept alive between requests: through httpx, the pooled client and
its cancel scopes cost a non-streamed request more CPU than all the rest of
the gateway. The answer object has the few members of ``httpx.Response`` the
forwarder uses, so the failover and error handling is the same whichever
client opened it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
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
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._paused = False
        self.expect_answer()

    def expect_answer(self) -> None:
        """Ready for the answer to the next request on this connection."""
        self._parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.pending: list[bytes] = []
        self._pending_bytes = 0

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.complete:  # bytes after the answer: the connection cannot be reused
            self.lost = StreamDroppedError("unexpected bytes after the answer")
            self.transport.close()  # type: ignore[union-attr]
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.lost = StreamDroppedError(f"unreadable answer: {error}")
            self.transport.close()  # type: ignore[union-attr]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
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
        # Read now: the parser forgets it once the message is complete.
        self.keep_alive = self._parser.should_keep_alive()

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

    def reusable(self) -> bool:
        """Read to its end, framed, and neither side asked to close."""
        return (
            self.complete
            and self.lost is None
            and self._framed()
            and self.keep_alive
            and not self.closed
        )

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
        """Until something happens: data, the end, or the connection lost.

        A stream waits once per chunk. Rather than a timer set and cancelled each
        time, one timer per connection runs to the latest deadline: when it fires
        early (the deadline moved on since), it is set again for the rest.
        """
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._deadline = loop.time() + timeout_s
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._check_deadline)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return  # nobody waits: the next wait sets a timer again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._waiter.set_exception(StreamTimeoutError())
        else:
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def stop_timer(self) -> None:
        """The answer is done with: no timer keeps the connection alive or fires later."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class StreamedAnswer:
    """An engine's answer as it arrives, with the members of ``httpx.Response`` that the
    forwarder uses: ``status_code``, ``headers``, ``aread``, ``aiter_raw``, ``aclose``."""

    def __init__(
        self,
        protocol: _AnswerProtocol,
        read_timeout_s: float,
        keep: Callable[[_AnswerProtocol], None] | None = None,
    ) -> None:
        """``keep`` takes the connection back once the answer was read to its end
        (a pool's); without it, the connection is closed."""
        self._protocol = protocol
        self._read_timeout_s = read_timeout_s
        self._keep = keep
        self._closed = False
        self.status_code = protocol.status
        self.headers = protocol.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body, in pieces: everything that arrived since the last one. The
        connection is closed (or kept, read to its end) however the reading ends."""
        try:
            while (piece := await self._next_piece()) is not None:
                yield piece
        finally:
            await self.aclose()

    async def aread(self) -> bytes:
        pieces = []
        try:
            while (piece := await self._next_piece()) is not None:
                pieces.append(piece)
        finally:
            await self.aclose()
        return b"".join(pieces)

    async def _next_piece(self) -> bytes | None:
        """What has arrived, waiting for it if need be; None at the end."""
        protocol = self._protocol
        while True:
            if protocol.pending:
                return protocol.take()
            if protocol.complete:
                return None
            if protocol.lost is not None:
                raise protocol.lost
            await protocol.wait(self._read_timeout_s)

    async def aclose(self) -> None:
        """Closing mid-answer tells the engine the client is gone: it stops generating.
        Only the first close counts: by a second one, a kept connection may be another
        request's."""
        if self._closed:
            return
        self._closed = True
        protocol = self._protocol
        protocol.stop_timer()
        if self._keep is not None and protocol.reusable():
            self._keep(protocol)
        elif protocol.transport is not None:
            protocol.transport.close()


async def open_stream(
    url: str,
    body: bytes,
    headers: dict[str, str],
    connect_timeout_s: float,
    read_timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> StreamedAnswer:
    """POST ``body`` to ``url`` on a new connection and return once the answer's headers
    are in; the connection is closed with the answer. For https, ``tls`` is best made
    once (httpx's context: the CAs its other requests trust); loading the CAs takes
    milliseconds."""
    parts, url_lines = _target(url)
    protocol = await _connect(parts, connect_timeout_s, tls)
    await _send(protocol, url_lines, body, headers, read_timeout_s)
    return StreamedAnswer(protocol, read_timeout_s)


class UpstreamClient:
    """Opens engine answers over connections kept alive between requests, per host.

    A connection goes back to the pool only when its answer was read to the end and
    neither side asked to close it (llama-server's requests carry ``Connection:
    close``); an idle one is dropped after ``idle_s``, below the engines' own 5 s
    keep-alive, so that it is not reused in the instant the engine closes it. Should
    that happen anyway (a reused connection closed before any answer), the request is
    sent once more on a new connection: the engine never read it.
    """

    def __init__(
        self,
        connect_timeout_s: float,
        read_timeout_s: float,
        tls: ssl.SSLContext | None = None,
        max_idle: int = 64,
        idle_s: float = 4.0,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._tls = tls
        self._max_idle = max_idle
        self._idle_s = idle_s
        self._idle: dict[tuple[str, str], deque[tuple[float, _AnswerProtocol]]] = {}

    async def open(self, url: str, body: bytes, headers: dict[str, str]) -> StreamedAnswer:
        """POST ``body`` to ``url``; returns once the answer's headers are in."""
        parts, url_lines = _target(url)
        idle = self._idle.get((parts.scheme, parts.netloc))
        if idle is None:
            idle = self._idle[(parts.scheme, parts.netloc)] = deque()
        protocol = self._reuse(idle)
        if protocol is not None:
            try:
                await _send(protocol, url_lines, body, headers, self._read_timeout_s)
            except StreamDroppedError:
                protocol = None  # closed as it was reused: the engine never read it
            else:
                return StreamedAnswer(protocol, self._read_timeout_s, self._keeper(idle))
        protocol = await _connect(parts, self._connect_timeout_s, self._tls)
        await _send(protocol, url_lines, body, headers, self._read_timeout_s)
        return StreamedAnswer(protocol, self._read_timeout_s, self._keeper(idle))

    def _reuse(self, idle: deque[tuple[float, _AnswerProtocol]]) -> _AnswerProtocol | None:
        now = time.monotonic()
        while idle:
            since, protocol = idle.pop()  # the most recent: the least likely to expire
            if now - since < self._idle_s and not protocol.closed and protocol.lost is None:
                protocol.expect_answer()
                return protocol
            protocol.transport.close()  # type: ignore[union-attr]
        return None

    def _keeper(
        self, idle: deque[tuple[float, _AnswerProtocol]]
    ) -> Callable[[_AnswerProtocol], None]:
        return functools.partial(self._keep, idle)

    def _keep(self, idle: deque[tuple[float, _AnswerProtocol]], protocol: _AnswerProtocol) -> None:
        if len(idle) >= self._max_idle:
            protocol.transport.close()  # type: ignore[union-attr]
            return
        idle.append((time.monotonic(), protocol))

    def close(self) -> None:
        for idle in self._idle.values():
            for _, protocol in idle:
                protocol.transport.close()  # type: ignore[union-attr]
            idle.clear()


async def _connect(
    parts: SplitResult, connect_timeout_s: float, tls: ssl.SSLContext | None
) -> _AnswerProtocol:
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
    return protocol


async def _send(
    protocol: _AnswerProtocol,
    url_lines: str,
    body: bytes,
    headers: dict[str, str],
    read_timeout_s: float,
) -> None:
    """Write the request and wait for the answer's headers; the connection is closed
    if they do not come."""
    try:
        if protocol.lost is not None or protocol.transport.is_closing():  # type: ignore[union-attr]
            raise protocol.lost or StreamDroppedError("connection closed")
        protocol.transport.write(_request_head(url_lines, len(body), headers) + body)  # type: ignore[union-attr]
        while not protocol.headers_done:
            if protocol.lost is not None:
                raise protocol.lost
            await protocol.wait(read_timeout_s)
        if _asks_to_close(headers):
            protocol.keep_alive = False
    except BaseException:
        protocol.stop_timer()
        protocol.transport.close()  # type: ignore[union-attr]
        raise


def _asks_to_close(headers: dict[str, str]) -> bool:
    return any(k.lower() == "connection" and v.lower() == "close" for k, v in headers.items())


@functools.lru_cache(maxsize=1024)
def _target(url: str) -> tuple[SplitResult, str]:
    """A URL's parts, and the lines of a request head that follow from the URL alone.
    A gateway sends to a few URLs again and again: each is read once."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}" + (f":{parts.port}" if parts.port else "")]
    if parts.username is not None:  # http://user:password@host, as httpx sends it
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(credentials.encode()).decode())
    return parts, "\r\n".join(lines)


def _request_head(url_lines: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [url_lines, f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
