"""The serving path through the official openai SDK and curl, on real engines."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, BASE, BASE_GGUF

pytestmark = pytest.mark.e2e

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
BOTH_ENGINES = pytest.mark.parametrize("model", [BASE, BASE_GGUF], ids=["vllm", "llama.cpp"])


def test_models_list_shows_the_base_on_both_engines(client):
    models = {m.id: m.model_extra for m in client.models.list()}
    assert models[BASE]["engine"] == "vllm"
    assert models[BASE_GGUF]["engine"] == "llama.cpp"
    assert client.models.retrieve(BASE_GGUF).id == BASE_GGUF


@BOTH_ENGINES
def test_chat(client, model):
    reply = client.chat.completions.create(
        model=model, messages=FRANCE, max_tokens=16, temperature=0
    )
    assert reply.model == model
    assert "paris" in reply.choices[0].message.content.lower()
    assert reply.usage is not None and reply.usage.completion_tokens > 0


@BOTH_ENGINES
def test_chat_streaming(client, model):
    stream = client.chat.completions.create(
        model=model,
        messages=FRANCE,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "paris" in text.lower()
    assert len(chunks) > 2
    # include_usage: a last chunk with no choices carries the usage, on both engines.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@BOTH_ENGINES
def test_completions(client, model):
    reply = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert "paris" in reply.choices[0].text.lower()


@BOTH_ENGINES
def test_completions_streaming(client, model):
    stream = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    assert "paris" in "".join(c.choices[0].text for c in stream if c.choices).lower()


def test_max_completion_tokens_is_honoured_on_llamacpp(client):
    reply = client.chat.completions.create(
        model=BASE_GGUF,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_completion_tokens=4,
    )
    assert reply.usage.completion_tokens <= 4


def test_a_prompt_longer_than_the_context_is_a_bad_request_that_says_so(client):
    long_prompt = [{"role": "user", "content": "word " * 3000}]  # llamacpp_n_ctx is 2048
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=BASE_GGUF, messages=long_prompt, max_tokens=4, stream=stream
            )
        assert caught.value.code == "context_length_exceeded"
        assert "maximum context length is 2048 tokens" in caught.value.message


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("model", [BASE, BASE_GGUF], ids=["vllm", "llama.cpp"])
@pytest.mark.parametrize(
    "bad",
    [{"temperature": 7}, {"max_tokens": 0}, {"logit_bias": "oops"}, {"n": -1}],
    ids=["temperature", "max_tokens", "logit_bias", "n"],
)
def test_bad_parameters_raise_bad_request(client, model, bad):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=FRANCE, **bad)
    assert caught.value.param == next(iter(bad))


def test_engine_side_validation_errors_are_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=FRANCE, max_tokens=10**6)
    assert "max_tokens" in caught.value.message


def test_missing_or_wrong_key_raises_authentication_error(gateway):
    def strip_key(request: httpx.Request) -> None:
        request.headers.pop("Authorization", None)

    no_key = gateway.client(
        api_key="unused", http_client=httpx.Client(event_hooks={"request": [strip_key]})
    )
    wrong_key = gateway.client(api_key="wrong")
    for sdk in (no_key, wrong_key):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk.models.list()
        assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        no_key.chat.completions.create(model=BASE, messages=FRANCE)
    with gateway.http() as http:
        assert http.get("/health", headers={"Authorization": ""}).status_code == 200


def test_engine_admin_routes_are_not_exposed(gateway):
    with gateway.http() as http:
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            response = http.post(path, json={"lora_name": "x", "lora_path": "/tmp"})
            assert response.status_code == 404
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_curl_streams_sse_ending_with_done(gateway):
    body = json.dumps({"model": BASE_GGUF, "messages": FRANCE, "max_tokens": 8, "stream": True})
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            "--fail-with-body",
            f"{gateway.api_url}/chat/completions",
            "-H",
            f"Authorization: Bearer {API_KEY}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    events = [line for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def _sample(metrics: str, name: str) -> float:
    return float(next(line for line in metrics.splitlines() if line.startswith(name)).split()[-1])


def test_ready_and_metrics(gateway, client):
    client.chat.completions.create(model=BASE, messages=FRANCE, max_tokens=4)
    with gateway.http() as http:
        ready = http.get("/ready").json()
        assert ready["status"] == "ready"
        assert {e["engine"] for e in ready["engines"]} == {"vllm", "llama.cpp"}
        predicted = f'tunegate_llamacpp_tokens_predicted_total{{model="{BASE_GGUF}"}}'
        before = _sample(http.get("/metrics").text, predicted)
        client.chat.completions.create(model=BASE_GGUF, messages=FRANCE, max_tokens=4)
        metrics = http.get("/metrics").text
    assert f'tunegate_requests_total{{engine="vllm",model="{BASE}",status="200"}}' in metrics
    assert "tunegate_engine_up" in metrics
    # llama-server's own metrics, re-exposed with the model they belong to.
    assert _sample(metrics, predicted) > before
    assert f'tunegate_llamacpp_requests_processing{{model="{BASE_GGUF}"}}' in metrics


# Each engine's own gauge of requests being generated.
RUNNING_GAUGE = {BASE: "vllm:num_requests_running", BASE_GGUF: "llamacpp:requests_processing"}


@BOTH_ENGINES
def test_a_client_that_goes_away_ends_the_generation_in_the_engine(gateway, client, model):
    client.chat.completions.create(model=model, messages=FRANCE, max_tokens=1)  # started
    engine_metrics = gateway.engine_serving(model)["url"] + "/metrics"

    def running() -> float:
        lines = httpx.get(engine_metrics, timeout=10).text.splitlines()
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(RUNNING_GAUGE[model])
        )

    assert running() == 0
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    body = {
        "model": model,
        "messages": story,
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    with gateway.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert running() == 1
    deadline = time.monotonic() + 4  # 1500 tokens take 10 s or more on either engine
    while running() != 0:
        assert time.monotonic() < deadline, "the engine kept generating for a client that left"
        time.sleep(0.2)


def test_tools_on_the_embedded_base_need_no_setting(client):
    """vLLM serves the embedded model with tunegate's tool template and the "hermes"
    parser: a request with tools is answered (the untrained base seldom calls them)."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    reply = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[weather],
        max_tokens=24,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls


def test_models_show_each_replica_of_a_base(client):
    base = client.models.retrieve(BASE).model_dump()
    (replica,) = base["replicas"]
    assert replica["state"] == "ready" and replica["name"] == f"vllm/{BASE}/0"
    assert {"in_flight", "requests", "adapters"} <= set(replica)


def test_an_idle_connection_outlives_the_clients_own_keep_alive(gateway):
    """httpx (under the openai SDK) reuses a connection idle for up to 5 s: the gateway
    must keep it open longer, or the next request meets a socket being closed."""
    host, port = gateway.url.removeprefix("http://").split(":")
    # The gateway's own name: any other Host is refused (DNS rebinding).
    request = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        replies = connection.makefile("rb")
        for wait_s in (0, 6):
            time.sleep(wait_s)
            connection.sendall(request)
            assert replies.readline().startswith(b"HTTP/1.1 200")
            headers = {}
            while (line := replies.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            replies.read(int(headers["content-length"]))
