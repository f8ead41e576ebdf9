"""Fuzzing the gateway against its own OpenAPI document (schemathesis), over fake engines.

Positive and negative data, at least 200 examples per operation. Whatever
comes in, the answer is one the document promises: a documented status, a
documented content type, a body that matches its documented schema (so no
``422`` and every error in the OpenAI shape), never a ``5xx``, and nothing
that should never leave the gateway (a traceback, a file path, a key). A body
that is valid by the schema of an upload route is accepted.
"""

from __future__ import annotations

import json
import re
import tempfile

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.settings import Settings
from tests.unit.fake_responses import ResponsesUpstream
from tests.unit.fakes import fake_runtime

pytestmark = pytest.mark.filterwarnings("ignore")

_LEAKS = re.compile(r"Traceback|File \"|/work/|/tmp/|/root/|site-packages|sk-|Bearer ")
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Uploads whose schema says all that makes a body acceptable. Not /v1/adapters:
# no schema can say what makes a safetensors file a valid LoRA for the base.
UPLOADS = {("POST", "/v1/files"), ("POST", "/v1/fine_tunes")}
# Random model names are nearly all unknown (404); these reach the fake engines.
SERVED_MODELS = ("base", "base-gguf")
INFERENCE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})


def _app():
    data_root = tempfile.mkdtemp(prefix="tunegate-fuzz-")
    limits = {"max_request_bytes": 64 * 1024, "max_upload_bytes": 256 * 1024}

    async def fake_engines(settings_: Settings):
        return fake_runtime(settings_, ResponsesUpstream())

    # schemathesis calls the app as http://testserver: a name the gateway must answer to.
    settings = Settings(data_root=data_root, allowed_hosts=["testserver"], **limits)
    return create_app(settings, runtime_factory=fake_engines)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=200
)


def _check(response: httpx.Response | object) -> None:
    status = response.status_code  # type: ignore[attr-defined]
    text = response.text  # type: ignore[attr-defined]
    assert not _LEAKS.search(text), text[:500]
    if status >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


@schema.parametrize()
@settings(
    max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_every_answer_is_one_the_openapi_document_promises(case):
    # Live event streams end with their job: the fuzzer would hold one open.
    if case.path.endswith("/events") and case.query and "stream" in case.query:
        case.query.pop("stream")
    body = case.body
    if case.path in INFERENCE and isinstance(body, dict) and isinstance(body.get("model"), str):
        # Two requests in three go to a served model, so answers are checked too.
        pick = len(body["model"]) % 3
        body["model"] = SERVED_MODELS[pick] if pick < len(SERVED_MODELS) else body["model"]
    checks = CONFORMANCE + (
        [positive_data_acceptance] if (case.method, case.path) in UPLOADS else []
    )
    _check(case.call_and_validate(checks=checks))
