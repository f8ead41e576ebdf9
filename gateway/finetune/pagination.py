"""OpenAI's cursor pagination: newest first, ``after`` an id, ``limit``, ``has_more``."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequestError

MAX_LIMIT = 100


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"'limit' must be between 1 and {MAX_LIMIT}.", param="limit")
    return limit


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }
