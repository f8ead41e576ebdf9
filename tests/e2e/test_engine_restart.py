"""A crashed engine is restarted by the gateway, which stays up; requests wait for it meanwhile."""

from __future__ import annotations

import os
import signal
import time

import openai
import pytest

from tests.e2e.conftest import BASE, BASE_GGUF

pytestmark = [pytest.mark.e2e, pytest.mark.restarts_engine]

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def _kill_and_wait_back(gateway, client, model: str) -> None:
    """Kill the engine in the middle of a streamed answer, then watch the gateway recover."""
    # A llama.cpp model may have been stopped as least recently used: ask it first.
    client.chat.completions.create(model=model, messages=PROMPT, max_tokens=1)
    before = gateway.engine_serving(model)
    gateway_pid = gateway.process.pid
    stream = iter(
        client.chat.completions.create(
            model=model, messages=STORY, max_tokens=1000, temperature=0, stream=True
        )
    )
    for _ in range(3):
        next(stream)
    os.kill(before["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(openai.APIError) as broken:
        for _ in stream:
            pass
    assert time.monotonic() - killed_at < 5, "the broken stream was not closed in time"
    assert "engine stopped" in str(broken.value)
    with gateway.http() as http:
        ready = http.get("/ready")
        assert ready.status_code == 503
        state = next(e for e in ready.json()["engines"] if e["name"] == before["name"])
        assert state["state"] in ("restarting", "starting")

    # A request sent while the engine restarts waits for it instead of failing.
    reply = client.with_options(timeout=600).chat.completions.create(
        model=model, messages=PROMPT, max_tokens=8, temperature=0
    )
    assert "paris" in (reply.choices[0].message.content or "").lower()

    after = gateway.engine_serving(model)
    assert after["pid"] != before["pid"]
    assert after["restarts"] == before["restarts"] + 1
    assert gateway.process.poll() is None and gateway.process.pid == gateway_pid


def test_kill_9_llamacpp_is_restarted(gateway, client):
    _kill_and_wait_back(gateway, client, BASE_GGUF)


def test_kill_9_vllm_is_restarted_with_its_adapters(gateway, client, trained_adapters):
    _kill_and_wait_back(gateway, client, BASE)
    gateway.wait_ready(timeout_s=60)
    # The adapters answer again, with their own behaviour, without any user action.
    for name, adapter_id in trained_adapters.items():
        reply = client.chat.completions.create(
            model=adapter_id,
            messages=[{"role": "user", "content": "What do cats eat?"}],
            max_tokens=16,
            temperature=0,
        )
        expected = '{"answer"' if name == "json" else "Ahoy"
        assert reply.choices[0].message.content.strip().startswith(expected)
