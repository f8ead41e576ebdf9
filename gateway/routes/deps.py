"""Access to the gateway's runtime from a route."""

from __future__ import annotations

from fastapi import Request

from gateway.runtime import GatewayRuntime


def runtime_of(request: Request) -> GatewayRuntime:
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime
