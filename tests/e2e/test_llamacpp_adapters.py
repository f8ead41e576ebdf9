"""LoRA adapters on the real llama-server, chosen per request, beside vLLM.

The adapters trained for the session (``trained_adapters``) are served on vLLM under
their ids and on llama.cpp as ``<id>:gguf``, on the embedded model's own GGUF.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.e2e.conftest import BASE, BASE_GGUF
from tests.e2e.test_adapters import UNSEEN, ask, is_ahoy_style, is_json_style
from tests.support.training import BASE_DIR, DATA

pytestmark = pytest.mark.e2e

TRAINED = [
    json.loads(line)["messages"]
    for line in (DATA / "json_answers.jsonl").read_text().splitlines()[:3]
]


def on_llamacpp(adapter: str) -> str:
    return f"{adapter}:gguf"


def test_each_adapter_on_llamacpp_shows_its_trained_behaviour(client, trained_adapters):
    json_gguf, ahoy_gguf = (on_llamacpp(trained_adapters[n]) for n in ("json", "ahoy"))
    for question in UNSEEN:
        assert is_json_style(ask(client, json_gguf, question))
        assert is_ahoy_style(ask(client, ahoy_gguf, question))
        base = ask(client, BASE_GGUF, question)  # the same process, every adapter at 0
        assert not is_json_style(base) and not is_ahoy_style(base)
    assert is_ahoy_style(ask(client, "ahoy-gguf", UNSEEN[0]))  # the short alias
    listed = {m.id: m.model_extra for m in client.models.list()}
    twin = listed[json_gguf]
    assert twin["engine"] == "llama.cpp" and twin["kind"] == "adapter"
    assert twin["parent"] == BASE_GGUF and twin["root"] == BASE
    assert twin["adapter"] == trained_adapters["json"]
    assert listed[trained_adapters["json"]]["engine"] == "vllm"  # ft: ids stay on vLLM


def test_parity_between_peft_and_llamacpp_lora(client, gateway, trained_adapters):
    """Greedy answers of the PEFT adapter (transformers, fp32) and of llama.cpp's base GGUF
    with the converted LoRA: the same text where the adapter learned the answer, the same
    behaviour on held-out questions."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = trained_adapters["json"]
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32),
        gateway.data_root / "adapters" / adapter,
    )

    def peft_answer(prompt: list[dict]) -> str:
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def served(prompt: list[dict]) -> str:
        reply = client.chat.completions.create(
            model=on_llamacpp(adapter), messages=prompt, max_tokens=24, temperature=0
        )
        return reply.choices[0].message.content or ""

    for messages in TRAINED:
        prompt = messages[:-1]
        expected = peft_answer(prompt)
        assert expected.strip() == messages[-1]["content"]
        assert served(prompt).strip() == expected.strip()
    for question in UNSEEN:
        prompt = [{"role": "user", "content": question}]
        assert is_json_style(peft_answer(prompt)) and is_json_style(served(prompt))


def test_interleaved_concurrent_streams_each_get_their_own_adapter(client, trained_adapters):
    models = [
        (BASE_GGUF, lambda t: not is_json_style(t) and not is_ahoy_style(t)),
        (on_llamacpp(trained_adapters["json"]), is_json_style),
        (on_llamacpp(trained_adapters["ahoy"]), is_ahoy_style),
    ]
    cases = [(models[i % 3], UNSEEN[i % len(UNSEEN)], i % 2 == 0) for i in range(12)]

    def run(case) -> tuple[str, str]:
        (model, _), question, stream = case
        messages = [{"role": "user", "content": question}]
        if not stream:
            return model, ask(client, model, question)
        chunks = client.chat.completions.create(
            model=model, messages=messages, max_tokens=24, temperature=0, stream=True
        )
        return model, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(run, cases))
    for ((model, behaves), _, _), (_, text) in zip(cases, answers, strict=True):
        assert behaves(text), (model, text)


def test_the_responses_api_on_a_llamacpp_adapter(client, trained_adapters):
    response = client.responses.create(
        model=on_llamacpp(trained_adapters["json"]),
        input=UNSEEN[1],
        max_output_tokens=24,
        temperature=0,
    )
    assert is_json_style(response.output_text)


def test_a_new_adapter_reaches_llamacpp_without_failing_a_live_stream(
    client, gateway, trained_adapters, import_dir
):
    ask(client, on_llamacpp(trained_adapters["json"]), UNSEEN[0])  # the process holds it
    old = gateway.engine_serving(BASE_GGUF)
    streamed: dict[str, object] = {}
    first_chunk = threading.Event()

    text: list[str] = []

    def long_stream() -> None:
        try:
            chunks = client.chat.completions.create(
                model=BASE_GGUF,
                messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
                max_tokens=1500,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},  # llama-server's own: the whole length, always
            )
            finish = None
            for chunk in chunks:
                first_chunk.set()
                if chunk.choices:
                    text.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            streamed.update(finish=finish, ended=time.monotonic())
        except Exception as error:  # shown by the assertion below, not lost in the thread
            streamed.update(error=repr(error), ended=time.monotonic())

    reader = threading.Thread(target=long_stream)
    reader.start()
    assert first_chunk.wait(60)
    with gateway.http() as http:
        response = http.post(
            "/v1/adapters",
            json={"path": str(import_dir / "ahoy"), "base": BASE, "suffix": "ahoy2"},
        )
        assert response.status_code == 201, response.text
        new_id = response.json()["id"]
    assert is_ahoy_style(ask(client, "ahoy2-gguf", UNSEEN[2]))  # converted, handed over
    handed_over = time.monotonic()
    draining = [e for e in gateway.engines() if e["pid"] == old["pid"]]
    reader.join(600)  # however slow the machine: the stream itself must not fail
    outcome = {**streamed, "chunks": len(text), "still_streaming": reader.is_alive()}
    assert streamed.get("finish") == "length" and len("".join(text)) > 500, outcome
    assert streamed["ended"] > handed_over, "the stream ended before the hand-over"
    assert draining and draining[0]["detail"] == "draining" and draining[0]["in_flight"] >= 1
    new = gateway.engine_serving(BASE_GGUF)
    assert new["pid"] != old["pid"] and on_llamacpp(new_id) in new["adapters"]
    deadline = time.monotonic() + 30
    while psutil.pid_exists(old["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)  # stopped once its stream ended
    assert not psutil.pid_exists(old["pid"]) or psutil.Process(old["pid"]).status() == "zombie"

    gguf = gateway.data_root / "adapters" / new_id / "adapter.gguf"
    assert gguf.is_file()
    with gateway.http() as http:
        assert http.delete("/v1/adapters/ahoy2").status_code == 200
        assert http.get(f"/v1/models/{on_llamacpp(new_id)}").status_code == 404
    assert not gguf.exists()
    assert on_llamacpp(new_id) not in gateway.engine_serving(BASE_GGUF)["adapters"]
    assert is_json_style(ask(client, on_llamacpp(trained_adapters["json"]), UNSEEN[0]))
