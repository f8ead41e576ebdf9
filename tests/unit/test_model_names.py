"""OpenAI model names mapped to local models, on every route (fake engines)."""

from __future__ import annotations

import json

import pytest

from gateway.model_names import OPENAI_FINE_TUNABLE, OpenAINames, openai_models_of
from gateway.settings import EMBEDDED_MODEL_ID, Settings
from tests.unit.test_fine_tuning_routes import upload
from tests.unit.test_routing import assert_openai_error

MAPPED = {"gpt-4o-mini-2024-07-18": "base", "gpt-4.1-mini": "base-gguf"}
ASK = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def mapped(make_gateway):
    return make_gateway(openai_models=MAPPED)


def sent_models(upstream) -> list[str]:
    return [json.loads(r.content)["model"] for r in upstream.seen]


def test_by_default_openai_fine_tunable_models_train_the_embedded_model(tmp_path):
    default = openai_models_of(Settings(data_root=tmp_path))
    assert set(default) == set(OPENAI_FINE_TUNABLE)
    assert set(default.values()) == {EMBEDDED_MODEL_ID}
    assert {"gpt-4o-mini-2024-07-18", "gpt-4o-mini", "gpt-4.1-nano", "gpt-3.5-turbo"} <= set(
        default
    )
    assert openai_models_of(Settings(data_root=tmp_path, embedded_model=False)) == {}
    # A user's map replaces the default, and an empty one maps nothing.
    assert openai_models_of(Settings(data_root=tmp_path, openai_models=MAPPED)) == MAPPED
    assert openai_models_of(Settings(data_root=tmp_path, openai_models={})) == {}


async def test_chat_and_completions_reach_the_engine_under_the_local_name(mapped, upstream):
    chat = await mapped.post(
        "/v1/chat/completions", json={"model": "gpt-4o-mini-2024-07-18", "messages": ASK}
    )
    assert chat.status_code == 200, chat.text
    completion = await mapped.post(
        "/v1/completions", json={"model": "gpt-4.1-mini", "prompt": "Paris is"}
    )
    assert completion.status_code == 200, completion.text
    assert sent_models(upstream) == ["base", "base-gguf"]
    assert [r.url.host for r in upstream.seen] == ["vllm.test", "llama.test"]
    # The answer's model is the engine's own: the local model that answered.
    assert chat.json()["model"] == "base"


async def test_streams_and_local_ids_are_untouched(mapped, upstream):
    async with mapped.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini-2024-07-18", "messages": ASK, "stream": True},
    ) as reply:
        assert reply.status_code == 200
        assert b"[DONE]" in b"".join([chunk async for chunk in reply.aiter_raw()])
    raw = json.dumps({"model": "base", "messages": ASK}).encode()
    plain = await mapped.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert plain.status_code == 200
    assert sent_models(upstream) == ["base", "base"]
    assert upstream.seen[-1].content == raw  # a local id's body goes out byte for byte


async def test_responses_api_uses_the_mapping(mapped, upstream):
    reply = await mapped.post(
        "/v1/responses", json={"model": "gpt-4.1-mini", "input": "Capital of France?"}
    )
    assert reply.status_code == 200, reply.text
    assert sent_models(upstream) == ["base-gguf"]


async def test_models_list_and_retrieve_show_mapped_names(mapped):
    listed = {m["id"]: m for m in (await mapped.get("/v1/models")).json()["data"]}
    entry = listed["gpt-4o-mini-2024-07-18"]
    assert (entry["object"], entry["parent"], entry["root"], entry["kind"]) == (
        "model",
        "base",
        "base",
        "openai_name",
    )
    assert listed["gpt-4.1-mini"]["engine"] == "llama.cpp"
    retrieved = (await mapped.get("/v1/models/gpt-4o-mini-2024-07-18")).json()
    assert retrieved["id"] == "gpt-4o-mini-2024-07-18" and retrieved["parent"] == "base"
    assert (await mapped.get("/v1/models/base")).json()["kind"] == "base"


async def test_a_name_mapped_to_nothing_served_is_not_listed(make_gateway):
    gateway = make_gateway()  # the default map points at the embedded model, absent here
    ids = {m["id"] for m in (await gateway.get("/v1/models")).json()["data"]}
    assert ids == {"base", "base-gguf"}
    error = assert_openai_error(
        await gateway.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": ASK}),
        404,
        "model_not_found",
    )
    assert EMBEDDED_MODEL_ID in error["message"] and "openai_models" in error["message"]


@pytest.mark.parametrize("name", ["gpt-5", "o3-mini", "o1", "chatgpt-4o-latest", "davinci-002"])
async def test_an_unmapped_openai_name_is_404_naming_the_setting_and_the_bases(mapped, name):
    error = assert_openai_error(
        await mapped.post("/v1/chat/completions", json={"model": name, "messages": ASK}),
        404,
        "model_not_found",
    )
    assert error["param"] == "model" and error["type"] == "invalid_request_error"
    assert "openai_models" in error["message"] and "TUNEGATE_OPENAI_MODELS" in error["message"]
    assert "base, base-gguf" in error["message"]
    retrieve = assert_openai_error(await mapped.get(f"/v1/models/{name}"), 404, "model_not_found")
    assert "openai_models" in retrieve["message"]


async def test_other_unknown_names_keep_the_plain_message(mapped):
    error = assert_openai_error(await mapped.get("/v1/models/llama-9"), 404, "model_not_found")
    assert "openai_models" not in error["message"]


async def test_a_fine_tuning_job_on_an_openai_name_trains_the_local_base(mapped):
    file_id = (await upload(mapped))["id"]
    created = await mapped.post(
        "/v1/fine_tuning/jobs", json={"model": "gpt-4o-mini-2024-07-18", "training_file": file_id}
    )
    assert created.status_code == 200, created.text
    assert created.json()["model"] == "base"
    refused = await mapped.post(
        "/v1/fine_tuning/jobs", json={"model": "gpt-4o", "training_file": file_id}
    )
    error = assert_openai_error(refused, 404, "model_not_found")
    assert "openai_models" in error["message"] and "base" in error["message"]


def test_resolution_is_a_lookup_after_ids_and_aliases():
    names = OpenAINames({"gpt-4o": "base"})
    assert names.local_name("gpt-4o") == "base" and names.local_name("mine") == "mine"
    assert names.to_local("smollm2", ["base"]) == "smollm2"  # not OpenAI's: left to the caller
    with pytest.raises(Exception, match="openai_models"):
        names.to_local("gpt-4.1", ["base"])
