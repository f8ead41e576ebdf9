"""Adapters merged into GGUF models on llama.cpp: export, serving, parity, faults."""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.e2e.conftest import BASE
from tests.e2e.test_adapters import UNSEEN, ask, is_json_style
from tests.e2e.test_fine_tuning import upload, wait_for
from tests.support.training import BASE_DIR, DATA

pytestmark = pytest.mark.e2e

# Prompts from the training data: the trained answer is certain, so every
# precision must give the same text.
TRAINED = [
    json.loads(line)["messages"]
    for line in (DATA / "json_answers.jsonl").read_text().splitlines()[:3]
]


def merge(http: httpx.Client, adapter: str, quantization: str) -> dict:
    response = http.post(f"/v1/adapters/{adapter}/merge", json={"quantization": quantization})
    assert response.status_code == 200, response.text
    return response.json()


def wait_merge(http: httpx.Client, merge_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = http.get(f"/v1/merges/{merge_id}").json()
        if state["status"] in ("succeeded", "failed"):
            return state
        time.sleep(0.5)
    raise TimeoutError(merge_id)


@pytest.fixture(scope="module")
def merged_json(gateway, trained_adapters) -> dict[str, str]:
    """The JSON adapter merged at f16 and q8_0: quantization -> model id."""
    with gateway.http() as http:
        merges = [merge(http, trained_adapters["json"], q) for q in ("f16", "q8_0")]
        done = [wait_merge(http, m["id"]) for m in merges]
    assert all(m["status"] == "succeeded" for m in done), done
    return {m["quantization"]: m["model"] for m in done}


def test_fine_tune_with_export_serves_the_merged_model(client, gateway):
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=upload(client, DATA / "json_answers.jsonl"),
        suffix="jsongguf",
        hyperparameters={"n_epochs": 6},
        extra_body={"export": ["gguf"]},
    )
    job = wait_for(client, job.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    started = next(
        e
        for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data
        if e.data and "merge_id" in e.data
    )
    with gateway.http() as http:
        state = wait_merge(http, started.data["merge_id"])
    assert state["status"] == "succeeded", state
    model = state["model"]
    assert model == f"{job.fine_tuned_model}:gguf-q8_0"
    print(f"succeeded -> merged model servable in {state['finished_at'] - job.finished_at} s")
    listed = {m.id: m.model_extra for m in client.models.list()}
    assert listed[model]["engine"] == "llama.cpp" and listed[model]["kind"] == "merged"
    assert listed[model]["parent"] == job.fine_tuned_model and listed[model]["root"] == BASE
    for question in UNSEEN:
        assert is_json_style(ask(client, model, question))
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": UNSEEN[0]}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    assert is_json_style("".join(c.choices[0].delta.content or "" for c in stream if c.choices))


def test_parity_between_peft_vllm_and_llamacpp(client, gateway, trained_adapters, merged_json):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = trained_adapters["json"]
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32),
        gateway.data_root / "adapters" / adapter,
    )
    for messages in TRAINED:
        prompt = messages[:-1]
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        peft_text = tokenizer.decode(
            output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        answers = {
            name: client.chat.completions.create(
                model=served, messages=prompt, max_tokens=24, temperature=0
            )
            .choices[0]
            .message.content
            for name, served in (
                ("vllm", adapter),
                ("f16", merged_json["f16"]),
                ("q8_0", merged_json["q8_0"]),
            )
        }
        assert peft_text.strip() == messages[-1]["content"]
        assert answers["vllm"].strip() == peft_text.strip(), answers
        assert answers["f16"].strip() == peft_text.strip(), answers
        assert is_json_style(answers["q8_0"]), answers


def _decode_calls(gateway, model: str) -> float:
    """llama-server's count of decode steps for ``model``, from the gateway's /metrics."""
    name = f'tunegate_llamacpp_n_decode_total{{model="{model}"}}'
    with gateway.http() as http:
        lines = http.get("/metrics").text.splitlines()
    return float(next(line for line in lines if line.startswith(name)).split()[-1])


def test_eight_concurrent_streams_on_a_merged_model_match_their_solo_answers(
    client, gateway, merged_json
):
    model = merged_json["q8_0"]
    prompts = [
        json.loads(line)["messages"][:1]
        for line in (DATA / "json_answers.jsonl").read_text().splitlines()[:8]
    ]

    def streamed(prompt: list[dict]) -> tuple[str, int]:
        stream = client.chat.completions.create(
            model=model,
            messages=prompt,
            max_tokens=32,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage.completion_tokens

    alone = [streamed(prompt) for prompt in prompts]
    decodes_before = _decode_calls(gateway, model)
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        together = list(pool.map(streamed, prompts))
    decodes = _decode_calls(gateway, model) - decodes_before

    assert [text for text, _ in together] == [text for text, _ in alone]
    assert all(is_json_style(text) for text, _ in alone), alone
    # One at a time would take a decode step per token at least; in parallel slots the
    # eight answers share their steps.
    tokens = sum(count for _, count in together)
    assert decodes < tokens / 2, (decodes, tokens)


def test_kill_9_of_a_merged_models_engine(client, gateway, merged_json):
    model = merged_json["q8_0"]
    ask(client, model, UNSEEN[1])
    engine = gateway.engine_serving(model)
    os.kill(engine["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        try:
            assert is_json_style(ask(client, model, UNSEEN[1]))
            break
        except openai.InternalServerError as error:
            assert error.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.5)
    after = gateway.engine_serving(model)
    assert after["pid"] != engine["pid"] and after["restarts"] == engine["restarts"] + 1


def test_bad_merge_requests_fail_cleanly(gateway, trained_adapters):
    merged_dir = gateway.data_root / "merged"
    with gateway.http() as http:
        unknown = http.post("/v1/adapters/ft:nope:local:x:y/merge", json={})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "adapter_not_found"
        bad = http.post(
            f"/v1/adapters/{trained_adapters['ahoy']}/merge", json={"quantization": "q3_z"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "quantization"

        # A full disk, simulated: the gateway (and so the exporter it starts) may
        # write no file over 50 MB.
        pid = gateway.process.pid
        limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (50 * 2**20, limits[1]))
        try:
            started = merge(http, trained_adapters["ahoy"], "q8_0")
        finally:
            time.sleep(2)  # the exporter has been started, and inherited the limit
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
        failed = wait_merge(http, started["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "export_failed"
        assert "/" not in failed["error"]["message"]
        models = {m["id"] for m in http.get("/v1/models").json()["data"]}
        assert failed["model"] not in models
    assert not [p.name for p in merged_dir.iterdir() if trained_adapters["ahoy"] in p.name]


def test_deleting_a_merged_model_removes_its_file(gateway, trained_adapters):
    with gateway.http() as http:
        done = wait_merge(http, merge(http, trained_adapters["ahoy"], "q4_k_m")["id"])
        assert done["status"] == "succeeded", done
        gguf = gateway.data_root / "merged" / f"{done['model']}.gguf"
        assert gguf.is_file()
        deleted = http.delete(f"/v1/models/{done['model']}")
        assert deleted.json() == {"id": done["model"], "object": "model", "deleted": True}
        assert not gguf.exists()
        assert http.get(f"/v1/models/{done['model']}").status_code == 404
        assert http.delete(f"/v1/models/{BASE}").status_code == 400
