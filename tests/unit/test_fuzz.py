"""Fuzzing the gateway's own OpenAPI schema (schemathesis), over fake engines.

Positive and negative data, at least 200 examples per operation. Whatever
comes in: no answer ≥ 500, every error in the OpenAI shape, and nothing in a
body that should never leave the gateway (a traceback, a file path, a key).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway.app import create_app
from gateway.settings import Settings
from tests.unit.fakes import FakeUpstream, fake_runtime

pytestmark = pytest.mark.filterwarnings("ignore")

_LEAKS = re.compile(r"Traceback|File \"|/work/|/tmp/|/root/|site-packages|sk-|Bearer ")


def _app():
    import tempfile

    data_root = tempfile.mkdtemp(prefix="tunegate-fuzz-")
    limits = {"max_request_bytes": 64 * 1024, "max_upload_bytes": 256 * 1024}

    async def fake_engines(settings_: Settings):
        return fake_runtime(settings_, FakeUpstream())

    return create_app(Settings(data_root=data_root, **limits), runtime_factory=fake_engines)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=200
)


def _check(response: httpx.Response | object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    text = response.text  # type: ignore[attr-defined]
    assert status < 500, text[:500]
    assert not _LEAKS.search(text), text[:500]
    if status >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


@schema.parametrize()
@settings(
    max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_no_input_breaks_the_gateway(case):
    # Live event streams end with their job: the fuzzer would hold one open.
    if case.path.endswith("/events") and case.query and "stream" in case.query:
        case.query.pop("stream")
    _check(case.call())
