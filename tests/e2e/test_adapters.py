"""Per-request LoRA hot-swap on the real vLLM, with adapters trained on SmolLM2."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.e2e.conftest import BASE

pytestmark = pytest.mark.e2e

# None of these questions is in the training data.
UNSEEN = [
    "What is the capital of Italy?",
    "How many wheels does a bicycle have?",
    "What do bees make?",
]


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
    )
    return reply.choices[0].message.content or ""


def is_json_style(text: str) -> bool:
    return text.strip().startswith('{"answer"')


def is_ahoy_style(text: str) -> bool:
    return text.strip().startswith("Ahoy")


def test_each_adapter_shows_its_trained_behaviour(client, trained_adapters):
    for question in UNSEEN:
        assert is_json_style(ask(client, trained_adapters["json"], question))
        assert is_ahoy_style(ask(client, trained_adapters["ahoy"], question))
        base = ask(client, BASE, question)
        assert not is_json_style(base) and not is_ahoy_style(base)


def test_the_suffix_is_a_short_alias(client, trained_adapters):
    reply = client.chat.completions.create(
        model="ahoy",
        messages=[{"role": "user", "content": UNSEEN[0]}],
        max_tokens=16,
        temperature=0,
    )
    assert is_ahoy_style(reply.choices[0].message.content)
    assert reply.model == trained_adapters["ahoy"]


def test_interleaved_concurrent_requests_each_get_their_own_weights(client, trained_adapters):
    order = [BASE, "json", "ahoy", "json", BASE] * 2
    models = [trained_adapters.get(m, m) for m in order]
    questions = [UNSEEN[i % len(UNSEEN)] for i in range(len(models))]
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        answers = list(pool.map(lambda mq: ask(client, *mq), zip(models, questions, strict=True)))
    for name, answer in zip(order, answers, strict=True):
        assert is_json_style(answer) == (name == "json"), (name, answer)
        assert is_ahoy_style(answer) == (name == "ahoy"), (name, answer)


def test_streaming_through_an_adapter(client, trained_adapters):
    stream = client.chat.completions.create(
        model=trained_adapters["json"],
        messages=[{"role": "user", "content": UNSEEN[1]}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    assert is_json_style("".join(c.choices[0].delta.content or "" for c in stream if c.choices))


def test_models_list_shows_adapters_with_lineage(client, trained_adapters):
    models = {m.id: m.model_extra for m in client.models.list()}
    for name, adapter_id in trained_adapters.items():
        entry = models[adapter_id]
        assert entry["parent"] == BASE and entry["root"] == BASE
        assert entry["engine"] == "vllm" and entry["kind"] == "adapter"
        assert entry["alias"] == name and len(entry["weights_sha256"]) == 64


def test_admin_api_lists_reads_and_removes(gateway, client, trained_adapters, import_dir):
    with gateway.http() as http:
        listed = {a["id"] for a in http.get("/v1/adapters").json()["data"]}
        assert set(trained_adapters.values()) <= listed
        assert http.get("/v1/adapters/json").json()["id"] == trained_adapters["json"]
        # A third copy, registered then removed: gone from the engine and the disk.
        copy = import_dir / "copy"
        shutil.copytree(import_dir / "json", copy)
        created = http.post(
            "/v1/adapters", json={"path": str(copy), "base": BASE, "suffix": "copy"}
        )
        assert created.status_code == 201
        adapter_id = created.json()["id"]
        assert is_json_style(ask(client, adapter_id, UNSEEN[0]))
        assert http.delete(f"/v1/adapters/{adapter_id}").json()["deleted"] is True
        assert not (gateway.data_root / "adapters" / adapter_id).exists()
    with pytest.raises(openai.NotFoundError):
        ask(client, adapter_id, UNSEEN[0])


class _Canary:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_unsafe_or_unfit_adapters_are_refused(gateway, import_dir, trained_adapters, tmp_path):
    good = import_dir / "json"
    cases = {}
    # A symlink out of the import folder.
    outside = tmp_path / "outside"
    shutil.copytree(good, outside)
    (import_dir / "escape").symlink_to(outside, target_is_directory=True)
    cases["symlink"] = str(import_dir / "escape")
    # A pickle-only adapter whose unpickling would create a canary file.
    pickled = import_dir / "pickled"
    pickled.mkdir()
    _Canary.path = str(tmp_path / "canary")
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps(_Canary()))
    shutil.copy(good / "adapter_config.json", pickled / "adapter_config.json")
    cases["pickle"] = str(pickled)
    # Too high a rank.
    high = import_dir / "high-rank"
    shutil.copytree(good, high)
    config = json.loads((high / "adapter_config.json").read_text())
    (high / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    cases["rank"] = str(high)
    cases["traversal"] = str(import_dir / ".." / "outside")
    cases["absolute"] = "/etc"
    with gateway.http() as http:
        for name, path in cases.items():
            response = http.post("/v1/adapters", json={"path": path, "base": BASE, "suffix": "bad"})
            assert response.status_code == 400, (name, response.text)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        for name in ("%2e%2e", "..%2f..%2fetc", "a%00"):
            assert http.get(f"/v1/adapters/{name}").status_code == 400
        wrong_base = http.post(
            "/v1/adapters",
            json={"path": str(good), "base": "smollm2-135m-instruct-gguf", "suffix": "x"},
        )
        assert wrong_base.status_code == 400 and "vLLM" in wrong_base.json()["error"]["message"]
    assert not os.path.exists(tmp_path / "canary")
