"""Secure defaults (gateway.security): the Host allow-list, the Origin check and CORS,
JSON-only bodies, and no keyless gateway on a public address. Over fake engines."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from gateway.security import check_exposure, is_loopback
from gateway.settings import Settings
from tests.support.adapter_factory import write_adapter
from tests.support.gateway_process import REPO
from tests.unit.test_fine_tuning_routes import GOOD, settle, upload
from tests.unit.test_routing import assert_openai_error

ATTACKER = "http://attacker.example"
REBOUND = "rebind.attacker.example:8000"
JSONL = ("data.jsonl", GOOD)


@pytest.fixture
def imports(tmp_path):
    folder = tmp_path / "imports"
    folder.mkdir()
    return folder


@pytest.fixture
def admin(make_gateway, imports):
    return make_gateway(adapter_import_dirs=[imports])


def import_body(folder) -> dict[str, str]:
    return {"path": str(folder), "base": "base", "suffix": "bot"}


async def adapter_ids(gateway) -> list[str]:
    return [a["id"] for a in (await gateway.get("/v1/adapters")).json()["data"]]


async def file_ids(gateway) -> list[str]:
    return [f["id"] for f in (await gateway.get("/v1/files")).json()["data"]]


# --- Host ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/files", "/v1/models", "/health", "/ui", "/openapi.json"])
async def test_a_foreign_host_is_refused_on_every_route(gateway, path):
    error = assert_openai_error(
        await gateway.get(path, headers={"Host": REBOUND}), 403, "host_not_allowed"
    )
    assert "allowed_hosts" in error["message"] and "rebind.attacker.example" in error["message"]


async def test_a_foreign_host_is_refused_before_the_key_is_asked_for(make_gateway):
    keyed = make_gateway(api_key="k")
    answer = await keyed.get("/v1/files", headers={"Host": REBOUND, "Authorization": "Bearer k"})
    assert_openai_error(answer, 403, "host_not_allowed")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "LOCALHOST:1", "127.0.0.1", "127.0.0.1:9", "[::1]:80"]
)
async def test_the_machine_own_names_pass_on_any_port(gateway, host):
    answer = await gateway.get("/v1/models", headers={"Host": host})
    assert answer.status_code == 200, answer.text


async def test_configured_names_pass_and_a_star_turns_the_check_off(make_gateway):
    named = make_gateway(allowed_hosts=["Gateway.Lan"])
    assert (await named.get("/v1/files", headers={"Host": "gateway.lan:8000"})).status_code == 200
    assert_openai_error(await named.get("/v1/files", headers={"Host": "other.lan"}), 403)
    anything = make_gateway(allowed_hosts=["*"])
    assert (await anything.get("/v1/files", headers={"Host": REBOUND})).status_code == 200


async def test_the_bound_address_passes(make_gateway):
    bound = make_gateway(host="10.1.2.3", api_key="k")
    auth = {"Authorization": "Bearer k"}
    ok = await bound.get("/v1/files", headers={"Host": "10.1.2.3:8000", **auth})
    assert ok.status_code == 200, ok.text
    assert_openai_error(await bound.get("/v1/files", headers={"Host": "10.1.2.4", **auth}), 403)


async def test_bound_to_every_address_any_ip_passes_but_not_a_name(make_gateway):
    everywhere = make_gateway(host="0.0.0.0", api_key="k")
    auth = {"Authorization": "Bearer k"}
    for host in ("192.168.1.5:8000", "[fe80::1]:8000"):
        answer = await everywhere.get("/v1/files", headers={"Host": host, **auth})
        assert answer.status_code == 200, (host, answer.text)
    assert_openai_error(await everywhere.get("/v1/files", headers={"Host": REBOUND, **auth}), 403)


# --- Origin and CORS ----------------------------------------------------------


async def test_a_foreign_origin_cannot_import_an_adapter(admin, imports):
    folder = write_adapter(imports / "a")
    origin = {"Origin": ATTACKER}
    answer = await admin.post("/v1/adapters", json=import_body(folder), headers=origin)
    error = assert_openai_error(answer, 403, "origin_not_allowed")
    assert "cors_origins" in error["message"]
    assert await adapter_ids(admin) == []


async def test_a_foreign_origin_cannot_upload_or_start_a_job(gateway):
    origin = {"Origin": ATTACKER}
    upload_answer = await gateway.post(
        "/v1/files", files={"file": JSONL}, data={"purpose": "fine-tune"}, headers=origin
    )
    assert_openai_error(upload_answer, 403, "origin_not_allowed")
    one_call = await gateway.post(
        "/v1/fine_tunes", files={"file": JSONL}, data={"model": "base"}, headers=origin
    )
    assert_openai_error(one_call, 403, "origin_not_allowed")
    assert await file_ids(gateway) == []
    file_id = (await upload(gateway))["id"]
    job = {"model": "base", "training_file": file_id}
    answer = await gateway.post("/v1/fine_tuning/jobs", json=job, headers=origin)
    assert_openai_error(answer, 403, "origin_not_allowed")
    assert (await gateway.get("/v1/fine_tuning/jobs")).json()["data"] == []
    for refused in (
        gateway.delete(f"/v1/files/{file_id}", headers=origin),
        gateway.get(f"/v1/files/{file_id}/content", headers=origin),  # a cors-mode fetch
        gateway.get("/v1/files", headers={"Origin": "null"}),  # a sandboxed page
    ):
        assert_openai_error(await refused, 403, "origin_not_allowed")
    assert await file_ids(gateway) == [file_id]


async def test_the_gateway_own_page_may_post(gateway):
    """The /ui page's requests carry Origin http://<Host>: the same origin."""
    for host in ("localhost", "127.0.0.1:8000"):
        own = {"Host": host, "Origin": f"http://{host}"}
        answer = await gateway.post(
            "/v1/files", files={"file": JSONL}, data={"purpose": "fine-tune"}, headers=own
        )
        assert answer.status_code == 200, answer.text
        assert "access-control-allow-origin" not in answer.headers
    other_port = {"Host": "localhost:8000", "Origin": "http://localhost:3000"}
    assert_openai_error(await gateway.get("/v1/files", headers=other_port), 403)


async def test_a_listed_origin_gets_cors_answers_and_preflights(make_gateway):
    app_origin = "http://localhost:3000"
    gateway = make_gateway(cors_origins=[app_origin + "/"], api_key="k")
    preflight = await gateway.options(
        "/v1/chat/completions",
        headers={
            "Origin": app_origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )
    assert preflight.status_code == 204  # no key on a preflight, and none needed
    assert preflight.headers["access-control-allow-origin"] == app_origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == (
        "authorization, content-type, x-stainless-os"
    )
    models = await gateway.get(
        "/v1/models", headers={"Origin": app_origin, "Authorization": "Bearer k"}
    )
    assert models.status_code == 200
    assert models.headers["access-control-allow-origin"] == app_origin
    assert models.headers["vary"] == "Origin"
    unauthorized = await gateway.get("/v1/models", headers={"Origin": app_origin})
    assert_openai_error(unauthorized, 401)  # readable by the page: it says what is wrong
    assert unauthorized.headers["access-control-allow-origin"] == app_origin


async def test_preflights_from_other_origins_are_refused(make_gateway):
    gateway = make_gateway(cors_origins=["http://localhost:3000"])
    preflight = await gateway.options(
        "/v1/files", headers={"Origin": ATTACKER, "Access-Control-Request-Method": "POST"}
    )
    assert_openai_error(preflight, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in preflight.headers


async def test_a_star_allows_every_origin(make_gateway):
    gateway = make_gateway(cors_origins=["*"])
    answer = await gateway.get("/v1/models", headers={"Origin": ATTACKER})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ATTACKER


# --- content types ------------------------------------------------------------


async def test_json_routes_refuse_other_content_types(admin, imports):
    folder = write_adapter(imports / "a")
    body = json.dumps(import_body(folder))
    form = "application/x-www-form-urlencoded"
    for content_type in ("text/plain", "text/plain;charset=UTF-8", form):
        answer = await admin.post(
            "/v1/adapters", content=body, headers={"Content-Type": content_type}
        )
        error = assert_openai_error(answer, 400, "unsupported_content_type")
        assert "application/json" in error["message"]
    # A body without a type (a page's fetch of a Blob) is no more JSON than text/plain.
    untyped = httpx.Request("POST", "http://localhost/v1/adapters", content=body.encode())
    assert "content-type" not in untyped.headers
    assert_openai_error(await admin.send(untyped), 400, "unsupported_content_type")
    assert await adapter_ids(admin) == []
    chat = json.dumps({"model": "base", "messages": [{"role": "user", "content": "Hi"}]})
    answer = await admin.post(
        "/v1/chat/completions", content=chat, headers={"Content-Type": "text/plain"}
    )
    assert_openai_error(answer, 400, "unsupported_content_type")
    merge = await admin.post(
        "/v1/adapters/bot/merge", content=b'{"quantization": "f16"}', headers={"Content-Type": ""}
    )
    assert_openai_error(merge, 400, "unsupported_content_type")
    job = await admin.post(
        "/v1/fine_tuning/jobs", files={"file": JSONL}, data={"model": "base"}
    )  # multipart where JSON is read
    assert_openai_error(job, 400, "unsupported_content_type")
    charset = await admin.post(
        "/v1/adapters",
        content=body,
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert charset.status_code == 201, charset.text


async def test_upload_routes_take_multipart_only_where_they_read_it(admin):
    for path in ("/v1/files", "/v1/fine_tunes"):
        answer = await admin.post(path, json={"purpose": "fine-tune", "model": "base"})
        error = assert_openai_error(answer, 400, "unsupported_content_type")
        assert "multipart/form-data" in error["message"]
    as_text = await admin.post(
        "/v1/files", content=b"--x\r\n", headers={"Content-Type": "text/plain"}
    )
    assert_openai_error(as_text, 400, "unsupported_content_type")
    # /v1/adapters reads both: a multipart upload reaches the route (which finds no files).
    form = await admin.post("/v1/adapters", data={"base": "base", "suffix": "x"}, files={"n": b""})
    assert_openai_error(form, 400)
    assert form.json()["error"]["code"] != "unsupported_content_type"


async def test_the_sdk_passes_its_bodyless_posts_included(gateway):
    """No Origin, and Content-Type or none on bodyless posts (cancel, pause, resume)."""
    sdk = openai.AsyncOpenAI(
        base_url="http://localhost/v1", api_key="unused", http_client=gateway, max_retries=0
    )
    stored = await sdk.files.create(file=JSONL, purpose="fine-tune")
    assert [f.id async for f in sdk.files.list()] == [stored.id]
    assert "base" in {m.id async for m in sdk.models.list()}
    job = await sdk.fine_tuning.jobs.create(model="base", training_file=stored.id)
    await settle(gateway, job.id, ("queued",))
    # A bodyless post passes whatever type it names.
    typed = await gateway.post(
        f"/v1/fine_tuning/jobs/{job.id}/pause", headers={"Content-Type": "text/plain"}
    )
    assert typed.status_code == 200 and typed.json()["status"] == "paused", typed.text
    assert (await sdk.fine_tuning.jobs.resume(job.id)).status == "queued"
    assert (await sdk.fine_tuning.jobs.pause(job.id)).status == "paused"
    assert (await sdk.fine_tuning.jobs.resume(job.id)).status == "queued"
    assert (await sdk.fine_tuning.jobs.cancel(job.id)).status == "cancelled"
    assert (await sdk.files.delete(stored.id)).deleted


async def test_every_route_documents_the_refusal(gateway):
    document = (await gateway.get("/openapi.json")).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "403" in operation["responses"], (method, path)


# --- exposure -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("gateway.lan", False),
    ],
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_bind_needs_a_key(tmp_path):
    with pytest.raises(SystemExit, match="without an API key"):
        check_exposure(Settings(data_root=tmp_path, host="0.0.0.0"))
    with pytest.raises(SystemExit, match="without an API key"):
        check_exposure(Settings(data_root=tmp_path, host="gateway.lan", api_key=""))
    check_exposure(Settings(data_root=tmp_path, host="0.0.0.0", api_key="k"))
    check_exposure(Settings(data_root=tmp_path, host="localhost"))


def test_the_gateway_refuses_to_start_public_and_keyless_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--host", "0.0.0.0", "--data-root", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "without an API key" in lines[0], result.stderr
    assert not (tmp_path / "jobs.sqlite").exists()  # refused before anything started


def test_origin_and_host_settings_are_checked(tmp_path):
    settings = Settings(
        data_root=tmp_path, cors_origins=["HTTP://App.Example:3000/"], allowed_hosts=[" A.Lan "]
    )
    assert settings.cors_origins == ["http://app.example:3000"]
    assert settings.allowed_hosts == ["a.lan"]
    for bad in ({"cors_origins": ["app.example"]}, {"allowed_hosts": ["http://a.lan/"]}):
        with pytest.raises(ValueError):
            Settings(data_root=tmp_path, **bad)
