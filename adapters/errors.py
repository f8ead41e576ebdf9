"""Errors of the adapter registry, as branches of the gateway's one exception tree."""

from __future__ import annotations

from gateway.errors import ConflictError, InvalidRequestError, NotFoundError


class InvalidAdapterError(InvalidRequestError):
    default_code = "invalid_adapter"


class AdapterNotFoundError(NotFoundError):
    default_code = "adapter_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"No adapter '{name}' is registered.", param="id")


class AdapterExistsError(ConflictError):
    default_code = "adapter_exists"
