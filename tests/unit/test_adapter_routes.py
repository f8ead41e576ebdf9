"""The admin API for adapters and routing to them, over fake engines."""

from __future__ import annotations

import json

import pytest

from tests.support.adapter_factory import write_adapter
from tests.unit.test_routing import assert_openai_error


@pytest.fixture
def imports(tmp_path):
    folder = tmp_path / "imports"
    folder.mkdir()
    return folder


@pytest.fixture
def admin(make_gateway, imports):
    return make_gateway(adapter_import_dirs=[imports])


async def register(admin, folder, suffix="bot"):
    response = await admin.post(
        "/v1/adapters", json={"path": str(folder), "base": "base", "suffix": suffix}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_register_list_get_delete(admin, imports):
    created = await register(admin, write_adapter(imports / "a"))
    assert created["id"].startswith("ft:base:local:bot:imp-")
    assert created["object"] == "adapter" and created["aliases"] == ["bot"]
    listed = (await admin.get("/v1/adapters")).json()["data"]
    assert [a["id"] for a in listed] == [created["id"]]
    assert (await admin.get("/v1/adapters/bot")).json()["id"] == created["id"]
    assert (await admin.get(f"/v1/adapters/{created['id']}")).json()["rank"] == 4

    deleted = await admin.delete("/v1/adapters/bot")
    assert deleted.json() == {"id": created["id"], "object": "adapter", "deleted": True}
    assert admin.app.state.runtime.engines["vllm/base"].released == [created["id"]]
    assert_openai_error(await admin.get(f"/v1/adapters/{created['id']}"), 404)
    models = {m["id"] for m in (await admin.get("/v1/models")).json()["data"]}
    assert created["id"] not in models


async def test_multipart_upload(admin, tmp_path):
    source = write_adapter(tmp_path / "elsewhere")
    files = {
        "adapter_model": (
            "adapter_model.safetensors",
            (source / "adapter_model.safetensors").read_bytes(),
        ),
        "adapter_config": ("adapter_config.json", (source / "adapter_config.json").read_bytes()),
    }
    response = await admin.post("/v1/adapters", data={"base": "base", "suffix": "up"}, files=files)
    assert response.status_code == 201, response.text
    assert response.json()["source"] == {"import": "upload"}
    staging = admin.app.state.runtime.adapters.registry.root / ".staging"
    assert not any(staging.iterdir())  # the upload's temporary folder is gone


async def test_upload_missing_a_file_is_400(admin, tmp_path):
    source = write_adapter(tmp_path / "elsewhere")
    files = {"adapter_config": ("c.json", (source / "adapter_config.json").read_bytes())}
    response = await admin.post("/v1/adapters", data={"base": "base", "suffix": "up"}, files=files)
    assert assert_openai_error(response, 400)["param"] == "adapter_model"


async def test_adapters_are_models_with_lineage(admin, imports):
    created = await register(admin, write_adapter(imports / "a"))
    models = {m["id"]: m for m in (await admin.get("/v1/models")).json()["data"]}
    entry = models[created["id"]]
    assert (entry["parent"], entry["root"], entry["engine"], entry["kind"]) == (
        "base",
        "base",
        "vllm",
        "adapter",
    )
    assert entry["source"] == {"import": "path"} and len(entry["weights_sha256"]) == 64


async def test_alias_requests_reach_the_engine_under_the_full_id(admin, imports, upstream):
    created = await register(admin, write_adapter(imports / "a"))
    body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}]}
    assert (await admin.post("/v1/chat/completions", json=body)).status_code == 200
    assert json.loads(upstream.seen[0].content)["model"] == created["id"]
    assert admin.app.state.runtime.engines["vllm/base"].loaded == [created["id"]]


async def test_an_alias_shared_by_two_adapters_stops_resolving(admin, imports):
    first = await register(admin, write_adapter(imports / "a"))
    await register(admin, write_adapter(imports / "b"))
    body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}]}
    error = assert_openai_error(await admin.post("/v1/chat/completions", json=body), 404)
    assert "several" in error["message"]
    full = await admin.post("/v1/chat/completions", json={**body, "model": first["id"]})
    assert full.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"path": "../x", "base": "base", "suffix": "s"},
        {"path": "/etc", "base": "base", "suffix": "s"},
        {"path": "imports/a\u0000", "base": "base", "suffix": "s"},
        {"path": "x", "base": "../base", "suffix": "s"},
        {"path": "x", "base": "base", "suffix": "../s"},
        {"path": "x", "base": "base", "suffix": "s\u0000"},
        {"path": "x", "base": "base"},
        {"path": 3, "base": "base", "suffix": "s"},
    ],
)
async def test_bad_registrations_are_400(admin, body):
    response = await admin.post("/v1/adapters", json=body)
    assert_openai_error(response, 400)
    assert "/etc" not in response.json()["error"]["message"]


@pytest.mark.parametrize("name", ["%2e%2e", "%2e%2e%2fetc%2fpasswd", "..%00", "a%00b", "%2fetc"])
async def test_traversal_names_in_urls_are_400(admin, name):
    assert_openai_error(await admin.get(f"/v1/adapters/{name}"), 400, "invalid_name")
    assert_openai_error(await admin.delete(f"/v1/adapters/{name}"), 400, "invalid_name")


async def test_unknown_adapter_is_404(admin):
    assert_openai_error(await admin.get("/v1/adapters/nope"), 404, "adapter_not_found")
    assert_openai_error(await admin.delete("/v1/adapters/ft:base:local:x:y"), 404)


async def test_a_base_is_not_an_adapter(admin):
    assert_openai_error(await admin.delete("/v1/adapters/base"), 404)
