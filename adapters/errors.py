"""Errors of the adapter registry.

The registry is a library of its own: it does not import the gateway. Each
error says what kind of problem it is (``kind``); the gateway maps the kinds
to its OpenAI-shaped errors (``gateway.errors.from_adapter_error``), so a
client sees the same status, type and code as for any other error.
"""

from __future__ import annotations


class AdapterError(Exception):
    """A problem with an adapter or its name, in words fit for a user (no paths)."""

    kind = "invalid"  # invalid | not_found | conflict
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidAdapterError(AdapterError):
    default_code = "invalid_adapter"


class InvalidAdapterNameError(AdapterError):
    """An adapter id, alias, suffix or owner that breaks the naming rules."""


class AdapterNotFoundError(AdapterError):
    kind = "not_found"
    default_code = "adapter_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"No adapter '{name}' is registered.", param="id")


class AdapterExistsError(AdapterError):
    kind = "conflict"
    default_code = "adapter_exists"
