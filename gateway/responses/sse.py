"""Server-sent events: reading an engine's ``data:`` payloads, writing Responses events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


async def data_payloads(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each event in a byte stream that may be split anywhere."""
    buffer = b""
    async for chunk in chunks:
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = _data_of(event)
            if data is not None:
                yield data
    data = _data_of(buffer)  # an engine may end without the last blank line
    if data is not None:
        yield data


def _data_of(event: bytes) -> str | None:
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines).decode("utf-8", "replace") if lines else None


def event_bytes(event: dict[str, Any]) -> bytes:
    """One Responses event, named by its ``type`` as OpenAI sends it."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
