"""The streamed-answer client against a real socket server that answers as scripted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.engines.process import free_port
from gateway.stream_client import (
    StreamConnectError,
    StreamDroppedError,
    StreamTimeoutError,
    open_stream,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
EVENTS = [b'data: {"n": %d}\n\n' % n for n in range(5)] + [b"data: [DONE]\n\n"]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def server(script: Script) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.close()


def opening(url: str, read_timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    return open_stream(
        url + "/v1/chat/completions?x=1",
        b'{"stream": true}',
        {"content-type": "application/json", "Authorization": "Bearer k"},
        connect_timeout_s=2.0,
        read_timeout_s=read_timeout_s,
    )


async def test_a_chunked_stream_arrives_whole_with_the_request_as_sent():
    seen: list[tuple[bytes, bytes]] = []

    async def sse(reader, writer):  # type: ignore[no-untyped-def]
        seen.append(await read_request(reader))
        writer.write(SSE_HEAD)
        for event in EVENTS:
            writer.write(chunk(event))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await reader.read()  # until the client closes

    async with server(sse) as url:
        answer = await opening(url)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/event-stream"
        pieces = [piece async for piece in answer.aiter_raw()]
        await answer.aclose()
    assert b"".join(pieces) == b"".join(EVENTS) and len(pieces) > 1
    head, body = seen[0]
    assert head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer k\r\n" in head and body == b'{"stream": true}'


ERROR_BODY = b'{"error": {"message": "no"}}'


@pytest.mark.parametrize(
    "framing",
    [b"content-length: %d\r\n" % len(ERROR_BODY), b"connection: close\r\n"],
    ids=["content-length", "until-close"],
)
async def test_an_error_answer_is_read_whole(framing):
    async def refuse(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n" + framing + b"\r\n" + ERROR_BODY)
        await writer.drain()
        if b"close" not in framing:
            await reader.read()  # the client closes once it has the whole body

    async with server(refuse) as url:
        answer = await opening(url)
        assert answer.status_code == 400
        assert await answer.aread() == ERROR_BODY


async def test_an_interim_answer_is_skipped_for_the_real_one():
    async def early_hints(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
        writer.write(SSE_HEAD + chunk(EVENTS[0]) + b"0\r\n\r\n")
        await reader.read()

    async with server(early_hints) as url:
        answer = await opening(url)
        assert answer.status_code == 200 and "link" not in answer.headers
        assert await answer.aread() == EVENTS[0]


async def test_a_base_url_with_a_path_and_credentials_is_honoured():
    seen: list[bytes] = []

    async def record(reader, writer):  # type: ignore[no-untyped-def]
        seen.append((await read_request(reader))[0])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")

    async with server(record) as url:
        with_user = url.replace("http://", "http://user:p%40ss@") + "/prefix"
        answer = await open_stream(with_user + "/v1/chat/completions", b"{}", {}, 2.0, 5.0)
        assert await answer.aread() == b"{}"
    port = url.rsplit(":", 1)[1]
    assert seen[0].startswith(b"POST /prefix/v1/chat/completions HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in seen[0]
    assert b"\r\nAuthorization: Basic dXNlcjpwQHNz\r\n" in seen[0]  # user:p@ss


async def test_nobody_listening_is_a_connect_error():
    with pytest.raises(StreamConnectError):
        await opening(f"http://127.0.0.1:{free_port()}")


async def test_a_connection_closed_before_the_answer_is_dropped():
    async def hang_up(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)

    async with server(hang_up) as url:
        with pytest.raises(StreamDroppedError):
            await opening(url)


async def test_a_stream_cut_off_midway_raises_after_what_arrived():
    async def die(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(EVENTS[0]))
        await writer.drain()
        await asyncio.sleep(0.05)

    async with server(die) as url:
        answer = await opening(url)
        pieces: list[bytes] = []
        with pytest.raises(StreamDroppedError):
            async for piece in answer.aiter_raw():
                pieces.append(piece)
    assert pieces == [EVENTS[0]]


async def test_an_engine_that_goes_quiet_times_out():
    async def quiet(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(EVENTS[0]))
        await asyncio.sleep(2)

    async with server(quiet) as url:
        answer = await opening(url, read_timeout_s=0.3)
        with pytest.raises(StreamTimeoutError):
            async for _ in answer.aiter_raw():
                pass
        await answer.aclose()


async def test_a_slow_stream_longer_than_the_timeout_does_not_time_out():
    """The timeout is per wait for the next chunk, not for the whole answer."""

    async def slow(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(SSE_HEAD)
        for event in EVENTS:
            await asyncio.sleep(0.15)
            writer.write(chunk(event))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with server(slow) as url:
        answer = await opening(url, read_timeout_s=0.4)  # the answer takes about 0.9 s
        pieces = [piece async for piece in answer.aiter_raw()]
    assert b"".join(pieces) == b"".join(EVENTS)


async def test_closing_midway_tells_the_engine():
    closed = asyncio.Event()

    async def endless(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(SSE_HEAD)
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunk(EVENTS[0]))
                await writer.drain()
                await asyncio.sleep(0.01)
                if reader.at_eof() or await _eof_soon(reader):
                    break
        closed.set()

    async with server(endless) as url:
        answer = await opening(url)
        async for _ in answer.aiter_raw():
            break
        await answer.aclose()
        await asyncio.wait_for(closed.wait(), 5)


async def _eof_soon(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(reader.read(1), 0.001) == b""
    return False


async def test_a_reader_that_falls_behind_gets_every_byte():
    """Past the high-water mark the engine is paused, and resumed as the reader catches up."""
    payload = bytes(range(256)) * 4096  # 1 MiB per chunk, 8 of them

    async def flood(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(SSE_HEAD)
        for _ in range(8):
            writer.write(chunk(payload))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(flood) as url:
        answer = await opening(url)
        await asyncio.sleep(0.5)  # the engine writes; nobody reads
        assert answer._protocol._paused  # the engine waits, instead of the gateway buffering
        received = 0
        async for piece in answer.aiter_raw():
            received += len(piece)
            await asyncio.sleep(0.01)
        await answer.aclose()
    assert received == 8 * len(payload)
