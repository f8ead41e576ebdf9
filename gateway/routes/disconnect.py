"""Stop working for a client that has gone away.

uvicorn does not cancel a request's handler when its client disconnects; a
request waiting for a starting engine (or for its turn at a busy one) would
keep its admission slot for nobody. This watches the connection while the
request is forwarded and cancels the work when the client leaves, which frees
its place at once. Once a stream is being relayed, the streaming response
watches the connection itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client left before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
