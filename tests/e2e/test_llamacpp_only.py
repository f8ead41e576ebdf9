"""The install without vLLM: a gateway started with ``--no-vllm-enabled`` serves the base,
fine-tunes through the SDK and serves the adapter on llama.cpp under the job's own
``fine_tuned_model`` id, interleaved and concurrent with the base.

It runs in the suite's venv (which has vLLM installed) with vLLM turned off: what
``make serve ENGINE=llamacpp`` runs, minus the install.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, BASE, STARTUP_TIMEOUT_S
from tests.e2e.test_adapters import UNSEEN, ask, is_json_style
from tests.e2e.test_fine_tuning import upload, wait_for
from tests.support.gateway_process import GatewayProcess, start_gateway
from tests.support.logprobs import Steps, shared_tokens, steps_of
from tests.support.training import DATA

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def llamacpp_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    running = start_gateway(
        tmp_path_factory.mktemp("llamacpp-only"), "--no-vllm-enabled", api_key=API_KEY
    )
    try:
        running.wait_ready(STARTUP_TIMEOUT_S)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def cpp(llamacpp_gateway: GatewayProcess) -> openai.OpenAI:
    return llamacpp_gateway.client(timeout=300)


@pytest.fixture(scope="module")
def fine_tuned(cpp: openai.OpenAI):
    """One short fine-tune through the SDK, shared by the module's tests."""
    job = cpp.fine_tuning.jobs.create(
        model=BASE,
        training_file=upload(cpp, DATA / "json_answers.jsonl"),
        suffix="cpponly",
        # The rate and seed the suite's other JSON-style trainings use: at 10x the rate, some
        # seeds' trainings diverge (loss 0.4 → 2.9 → 1.4) and the adapter answers in loops.
        hyperparameters={"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 2},
        seed=0,
    )
    job = wait_for(cpp, job.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    return job


def test_only_llamacpp_runs_and_the_base_answers_under_its_own_id(cpp, llamacpp_gateway):
    engines = llamacpp_gateway.engines()
    assert engines and {e["engine"] for e in engines} == {"llama.cpp"}
    listed = {m.id: m.model_extra for m in cpp.models.list()}
    assert listed[BASE]["engine"] == "llama.cpp"
    answer = cpp.chat.completions.create(
        model=BASE,
        messages=[
            {"role": "user", "content": "What is the capital of France? Answer in one word."}
        ],
        max_tokens=8,
        temperature=0,
    )
    assert "Paris" in (answer.choices[0].message.content or "")


def test_the_fine_tuned_model_answers_on_llamacpp_as_it_is(cpp, fine_tuned, llamacpp_gateway):
    model = fine_tuned.fine_tuned_model
    listed = {m.id: m.model_extra for m in cpp.models.list()}
    assert listed[model]["engine"] == "llama.cpp" and listed[model]["kind"] == "adapter"
    assert listed[model]["parent"] == BASE and listed[model]["source"]["job_id"] == fine_tuned.id
    assert all(is_json_style(ask(cpp, model, question)) for question in UNSEEN)
    assert is_json_style(ask(cpp, "cpponly", UNSEEN[0]))  # the alias
    response = cpp.responses.create(
        model=model, input=UNSEEN[1], max_output_tokens=24, temperature=0
    )
    assert is_json_style(response.output_text)
    gguf = llamacpp_gateway.data_root / "adapters" / model / "adapter.gguf"
    assert gguf.is_file()  # converted before the job said succeeded


def test_base_and_adapter_interleaved_and_concurrent(cpp, fine_tuned):
    model = fine_tuned.fine_tuned_model
    cases = [(model if i % 2 else BASE, UNSEEN[i % 3], i % 4 < 2) for i in range(16)]

    def run(case: tuple[str, str, bool]) -> str:
        name, question, stream = case
        if not stream:
            return ask(cpp, name, question)
        chunks = cpp.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": question}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(run, cases))
    for (name, _, _), text in zip(cases, answers, strict=True):
        assert is_json_style(text) == (name == model), (name, text)


# Two long questions, each under its own system message, and a llama-server slot to pin
# them to, so that which state is reused where is known. Their system messages keep them
# from sharing more than the chat template's first tokens with each other or with any
# earlier request: a state that shares the template's default system prompt, computed in
# a batch with other slots' sequences, differs from one computed alone in its last bits,
# and on the Q4_1 base that moved the answer's log-probabilities by up to 0.2.
LONG_QUESTION = (
    "Tell me, in a few words, "
    + "and with great care about every detail, " * 8
    + "how many wheels does a bicycle have?"
)
OTHER_LONG_QUESTION = "Please describe, " + "slowly and in plain words, " * 10 + "what bees make."
SYSTEM_MESSAGE = {
    LONG_QUESTION: "Answer in one sentence.",
    OTHER_LONG_QUESTION: "Describe things slowly.",
}
SLOT = 0
# Computed in one go or after the slot's own 3-token prefix, the base's answers agreed
# to 4 decimals here; on the other model's state the first token changed (`{"` for `A`).
LOGPROB_TOLERANCE = 0.02


def test_the_base_and_an_adapter_never_answer_on_each_others_cached_prompt(cpp, fine_tuned):
    """llama-server's prompt cache in host memory keeps slots' states by their tokens;
    it used to restore a state computed with the adapter for the base asking the same
    prompt (and the base's for the adapter): patches/llama.cpp now keeps the cache to the
    adapters a state was computed with. On one slot: each model's answer to the long
    question on a cleared slot, then again after the other model's state of it went to
    the cache (when the other long question took the slot).

    The base's answers are compared token by token: unpatched, the base answered in the
    adapter's JSON style (`{"answer": …`) instead of "A bicycle has…". The adapter's are
    not: once its state is restored, its first token comes from a one-token step, which
    our fused LoRA path computes (the prompt's batch, llama.cpp's own nodes), and on the
    Q4_1 base that last-bit difference moves later log-probabilities by up to 0.25."""
    model = fine_tuned.fine_tuned_model

    def answer(name: str, question: str, **extra: object) -> Steps:
        reply = cpp.chat.completions.create(
            model=name,
            messages=[
                {"role": "system", "content": SYSTEM_MESSAGE[question]},
                {"role": "user", "content": question},
            ],
            max_tokens=16,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            extra_body={"id_slot": SLOT, **extra},
        )
        return steps_of(step.model_dump() for step in reply.choices[0].logprobs.content)

    fresh = {name: answer(name, LONG_QUESTION, cache_prompt=False) for name in (BASE, model)}
    again = {}
    for name, other in ((BASE, model), (model, BASE)):
        answer(other, LONG_QUESTION)  # the other model's state of the question...
        answer(name, OTHER_LONG_QUESTION)  # ...goes to the prompt cache here
        again[name] = answer(name, LONG_QUESTION)
    assert shared_tokens(fresh[BASE], again[BASE], LOGPROB_TOLERANCE) >= 1
    assert is_json_style("".join(token for token, _ in again[model]))
    assert not is_json_style("".join(token for token, _ in again[BASE]))


STORY = "Write a long story about a dragon who learns to bake bread in a small village."
PRIVATE = "My password is hunter2 and my bank is Zork Bank. " * 4 + "Summarise this."


def pinned_to(
    cpp: openai.OpenAI,
    slot: int,
    question: str,
    max_tokens: int,
    *,
    stream: bool = False,
    **extra: object,
):
    """A greedy chat request for the base on llama-server's slot ``slot`` (``id_slot``,
    passed through as clients send it); ``extra`` goes into the body too."""
    return cpp.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=stream,
        extra_body={"id_slot": slot, **extra},
    )


def test_a_request_pinned_to_a_busy_slot_waits_without_touching_its_answer(cpp):
    """A request that asks for a busy llama-server slot (``id_slot``, passed through as
    clients send it) is deferred until the slot is free. Unpatched, llama-server first
    loaded the cached state of that request's prompt into the busy slot, and the answer
    in flight went on from another client's prompt (a story about a dragon turned to
    ciphers after a prompt about a password). patches/llama.cpp keeps the slot as it is."""

    def pinned(question: str, max_tokens: int, **extra: object) -> str:
        reply = pinned_to(cpp, SLOT, question, max_tokens, **extra)
        return reply.choices[0].message.content or ""

    alone = pinned(STORY, 200, cache_prompt=False)
    pinned(PRIVATE, 4)  # the private prompt's state on the slot...
    pinned(OTHER_LONG_QUESTION, 4)  # ...goes to the prompt cache here
    chunks = pinned_to(cpp, SLOT, STORY, 200, stream=True, cache_prompt=False)
    texts, ends, after_the_pinned_request = [], [], 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = None
        for chunk in chunks:
            if chunk.choices:
                texts.append(chunk.choices[0].delta.content or "")
                ends.append(chunk.choices[0].finish_reason)
            if waiting is not None:
                after_the_pinned_request += 1
            elif "".join(texts):  # the story is being decoded on the slot
                waiting = pool.submit(pinned, PRIVATE, 4)
        assert waiting is not None and waiting.result(timeout=120).strip()
    assert "".join(texts) == alone
    # And the check was not empty: the whole story was decoded with the pinned request sent
    # at its start (unpatched, the story turned into another text and ended early).
    assert ends[-1] == "length" and after_the_pinned_request >= 150, (ends, len(texts))


@pytest.fixture
def base_engine(llamacpp_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    """The base's llama-server itself, for what it says of its slots."""
    with httpx.Client(base_url=llamacpp_gateway.engine_serving(BASE)["url"], timeout=30) as engine:
        yield engine


def test_a_request_pinned_past_the_last_slot_runs_as_soon_as_its_slot_frees(cpp, base_engine):
    """``id_slot`` past the last slot wraps round: n of n slots is slot 0. Unpatched, only
    llama-server's slot lookup wrapped it; the deferred queue, when slot 0 was released,
    looked for a task pinned to 0 and not to n. So a request pinned to n, deferred while
    slot 0 was busy, waited behind one pinned to another busy slot (here slot 1, held by
    a long story) although slot 0 stood idle. patches/llama.cpp reads the id as its slot."""
    slots = base_engine.get("/props").json()["total_slots"]
    assert slots >= 2

    def deferred() -> int:
        """The requests llama-server holds back, waiting for their slot (its /metrics)."""
        found = re.search(
            r"^llamacpp:requests_deferred (\S+)$", base_engine.get("/metrics").text, re.M
        )
        assert found, "llama-server's /metrics has no requests_deferred"
        return int(float(found[1]))

    def wait_until_deferred(count: int) -> None:
        deadline = time.monotonic() + 60
        while deferred() < count:
            assert time.monotonic() < deadline, f"{count} requests were never deferred"
            time.sleep(0.02)

    def stream(slot: int, max_tokens: int, decoding: threading.Event) -> float:
        for chunk in pinned_to(cpp, slot, STORY, max_tokens, stream=True, cache_prompt=False):
            if chunk.choices and chunk.choices[0].delta.content:
                decoding.set()
        return time.monotonic()

    def pinned(slot: int) -> float:
        assert pinned_to(cpp, slot, "Say hello.", 4).choices[0].message.content
        return time.monotonic()

    long_story, short_story = threading.Event(), threading.Event()
    with ThreadPoolExecutor(max_workers=4) as pool:
        long_end = pool.submit(stream, 1, 300, long_story)
        assert long_story.wait(60)
        short_end = pool.submit(stream, 0, 96, short_story)
        assert short_story.wait(60)
        behind = pool.submit(pinned, 1)
        wait_until_deferred(1)  # first in the queue, until the long story ends
        wrapped = pool.submit(pinned, slots)
        wait_until_deferred(2)  # slot 0 was busy with the short story: it waits too
        ended, long_ended = wrapped.result(120), long_end.result(120)
        short_end.result(120)
        behind.result(120)
    # It ran once slot 0 was released, long before slot 1 was (unpatched, only after it).
    assert ended < long_ended, (ended, long_ended)


def test_a_checkpoint_model_answers_on_llamacpp(cpp, fine_tuned):
    checkpoints = cpp.fine_tuning.jobs.checkpoints.list(fine_tuned.id).data
    assert checkpoints
    model = checkpoints[0].fine_tuned_model_checkpoint
    assert ":ckpt-step-" in model
    assert ask(cpp, model, UNSEEN[0]).strip()
    described = cpp.models.retrieve(model).model_extra
    assert described["engine"] == "llama.cpp"
    assert json.dumps(described["source"]).count(fine_tuned.id) == 1


def test_the_job_reports_drift_repetition_and_a_held_out_fold(cpp, fine_tuned):
    """This gateway runs with the default settings: the checks after every job, and for a
    set under the automatic split's size (12 examples, no validation file) a leave-some-out
    fold whose adapter answers the held-out samples."""
    events = cpp.fine_tuning.jobs.list_events(fine_tuned.id, limit=100).data
    measured = [e for e in events if e.data and "drift" in e.data]
    assert measured, [e.message for e in events]
    drift, repetition = measured[0].data["drift"], measured[0].data["repetition"]
    assert drift["prompts"] >= 8 and drift["kl"] >= 0
    assert repetition["prompts"] >= 4 and 0 <= repetition["mean"] <= 1
    checks = json.loads(cpp.files.content(fine_tuned.result_files[-1]).text)["checks"]
    assert checks["drift"] == drift and checks["repetition"] == repetition
    fold = [e.data["held_out_check"] for e in events if e.data and "held_out_check" in e.data]
    assert fold and fold[0]["held_out_examples"] >= 2 and fold[0]["curve"]
    samples = [e.data for e in events if e.data and "fine_tuned_answer" in e.data]
    assert samples and all(s["held_out"] and s["from_fold"] for s in samples)
