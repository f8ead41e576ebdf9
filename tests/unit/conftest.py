from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.adapter_factory import write_adapter
from tests.unit.fakes import FakeUpstream, fake_runtime

GatewayFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
async def make_gateway(tmp_path, upstream) -> AsyncIterator[GatewayFactory]:
    """Builds an app around fake engines (no lifespan) and an httpx client for it."""
    clients: list[httpx.AsyncClient] = []

    def factory(**settings_values: object) -> httpx.AsyncClient:
        settings = Settings(data_root=tmp_path, **settings_values)
        app = create_app(settings)
        app.state.runtime = fake_runtime(settings, upstream)
        # localhost: a name the gateway answers to (gateway.security checks Host).
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://localhost")
        client.app = app  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
def gateway(make_gateway: GatewayFactory) -> httpx.AsyncClient:
    return make_gateway()


@pytest.fixture
def trainer_options(tmp_path, monkeypatch) -> Callable[..., None]:
    template = write_adapter(tmp_path / "template-adapter")

    def configure(**options: object) -> None:
        monkeypatch.setenv(
            "FAKE_TRAINER", json.dumps({"adapter": str(template), "step_s": 0.05, **options})
        )

    configure()
    return configure


@pytest.fixture
async def started(make_gateway, trainer_options) -> AsyncIterator[Callable]:
    """Gateways whose fine-tuning service runs the stand-in trainer
    (``tests.unit.fake_trainer``) once started."""
    services = []

    def start(gateway) -> None:
        service = gateway.app.state.runtime.fine_tuning
        service.runner.trainer_module = "tests.unit.fake_trainer"
        service.start()
        services.append(service)

    yield start
    for service in services:
        await service.stop()
