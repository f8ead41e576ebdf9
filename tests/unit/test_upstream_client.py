"""The lean client's kept-alive connections, against a real socket server: reused when an
answer was read to its end, never when either side asked to close, or the answer was cut
short; a connection the engine closed while idle costs a request nothing."""

from __future__ import annotations

import asyncio

from gateway.stream_client import StreamDroppedError, UpstreamClient
from tests.unit.test_stream_client import EVENTS, SSE_HEAD, chunk, read_request, server

JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
CLOSING_HEAD = JSON_HEAD.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
HEADERS = {"content-type": "application/json"}


class Engine:
    """Answers every request on a connection until the client closes it; counts both."""

    def __init__(self, answers_per_connection: int = 1000, close: bool = False) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.answers_per_connection = answers_per_connection
        self.close = close

    async def __call__(self, reader, writer):  # type: ignore[no-untyped-def]
        self.connections += 1
        for _ in range(self.answers_per_connection):
            try:
                head, body = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            self.requests.append(body)
            payload = b'{"n": %d}' % len(self.requests)
            if b"stream" in body:
                writer.write(SSE_HEAD + b"".join(chunk(e) for e in EVENTS) + b"0\r\n\r\n")
            else:
                head = CLOSING_HEAD if self.close else JSON_HEAD
                writer.write(head % len(payload) + payload)
            await writer.drain()


def client(**options: float) -> UpstreamClient:
    return UpstreamClient(connect_timeout_s=2.0, read_timeout_s=5.0, **options)  # type: ignore[arg-type]


async def test_answers_read_to_the_end_reuse_one_connection():
    engine = Engine()
    pool = client()
    async with server(engine) as url:
        bodies = []
        for i in range(3):
            answer = await pool.open(url + "/v1/chat/completions", b'{"i": %d}' % i, HEADERS)
            bodies.append(await answer.aread())
        streamed = await pool.open(url + "/v1/chat/completions", b'{"stream": 1}', HEADERS)
        relayed = b"".join([piece async for piece in streamed.aiter_raw()])
        last = await pool.open(url + "/v1/chat/completions", b'{"i": 4}', HEADERS)
        assert await last.aread() == b'{"n": 5}'
        pool.close()
    assert bodies == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert relayed == b"".join(EVENTS)
    assert engine.connections == 1
    assert engine.requests == [b'{"i": 0}', b'{"i": 1}', b'{"i": 2}', b'{"stream": 1}', b'{"i": 4}']


async def test_closing_an_answer_again_leaves_its_kept_connection_alone():
    engine = Engine()
    pool = client()
    async with server(engine) as url:
        streamed = await pool.open(url + "/v1/chat/completions", b'{"stream": 1}', HEADERS)
        assert b"".join([piece async for piece in streamed.aiter_raw()]) == b"".join(EVENTS)
        await streamed.aclose()  # as a relay that ends lets go of it once more
        again = await pool.open(url + "/v1/chat/completions", b"{}", HEADERS)
        assert await again.aread() == b'{"n": 2}'
        pool.close()
    assert engine.connections == 1


async def test_a_connection_either_side_asked_to_close_is_not_reused():
    engine = Engine(close=True)
    pool = client()
    async with server(engine) as url:
        for _ in range(2):
            answer = await pool.open(url + "/v1/completions", b"{}", HEADERS)
            await answer.aread()
    assert engine.connections == 2

    engine = Engine()
    async with server(engine) as url:
        for _ in range(2):
            answer = await pool.open(url + "/v1/completions", b"{}", {"Connection": "close"})
            await answer.aread()
        pool.close()
    assert engine.connections == 2


async def test_a_stream_left_early_closes_its_connection():
    connections: list[asyncio.StreamReader] = []

    async def slow_stream(reader, writer):  # type: ignore[no-untyped-def]
        connections.append(reader)
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(EVENTS[0]))
        await writer.drain()
        assert await reader.read() == b""  # the client closed: the engine stops generating

    pool = client()
    async with server(slow_stream) as url:
        for _ in range(2):
            streamed = await pool.open(url + "/v1/chat/completions", b'{"stream": 1}', HEADERS)
            await streamed.aclose()  # the client went away mid-answer
        await asyncio.sleep(0.05)
        pool.close()
    assert len(connections) == 2
    assert all(reader.at_eof() for reader in connections)


async def test_a_connection_closed_by_the_engine_while_idle_costs_nothing():
    engine = Engine(answers_per_connection=1)  # closes after each answer, without saying so
    pool = client()
    async with server(engine) as url:
        for i in range(3):
            answer = await pool.open(url + "/v1/chat/completions", b'{"i": %d}' % i, HEADERS)
            assert await answer.aread() == b'{"n": %d}' % (i + 1)
            await asyncio.sleep(0.05)  # the close reaches the client
        pool.close()
    assert engine.connections == 3


async def test_a_reused_connection_dropped_before_the_answer_is_sent_again_on_a_new_one():
    seen: list[bytes] = []

    async def answers_once_then_hangs_up(reader, writer):  # type: ignore[no-untyped-def]
        _, body = await read_request(reader)
        seen.append(body)
        writer.write(JSON_HEAD % 2 + b"{}")
        await writer.drain()
        _, body = await read_request(reader)  # the next one: closed without an answer
        seen.append(body)

    pool = client()
    async with server(answers_once_then_hangs_up) as url:
        answer = await pool.open(url + "/v1/chat/completions", b'{"i": 0}', HEADERS)
        await answer.aread()
        again = await pool.open(url + "/v1/chat/completions", b'{"i": 1}', HEADERS)
        assert await again.aread() == b"{}"
        pool.close()
    assert seen == [b'{"i": 0}', b'{"i": 1}', b'{"i": 1}']


async def test_an_idle_connection_past_its_time_is_not_reused():
    engine = Engine()
    pool = client(idle_s=0.05)
    async with server(engine) as url:
        for _ in range(2):
            answer = await pool.open(url + "/v1/chat/completions", b"{}", HEADERS)
            await answer.aread()
            await asyncio.sleep(0.1)
        pool.close()
    assert engine.connections == 2


async def test_an_answer_cut_short_is_an_error_and_its_connection_is_not_kept():
    async def cut(reader, writer):  # type: ignore[no-untyped-def]
        await read_request(reader)
        writer.write(JSON_HEAD % 100 + b'{"partial"')
        await writer.drain()

    pool = client()
    async with server(cut) as url:
        answer = await pool.open(url + "/v1/chat/completions", b"{}", HEADERS)
        try:
            await answer.aread()
        except StreamDroppedError:
            pass
        else:
            raise AssertionError("a cut answer read as whole")
        assert not any(pool._idle.values())
        pool.close()
