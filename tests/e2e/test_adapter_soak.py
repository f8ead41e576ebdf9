"""64 adapters over the shared gateway's 4 adapter slots on the real vLLM, under mixed load
(base and adapters, streamed and not, concurrent clients), so that nearly every adapter
request evicts another: no registered adapter ever answers 404, and every request succeeds.

The adapters are synthetic (small random LoRA weights for the embedded base), registered
through the admin API and removed again at the end; the request count is fixed, so the
test stays within minutes on 2 CPU cores (128 requests took 3.5 min on a quiet machine,
192 took 9.7 min on one loaded several times over; each vLLM load took 2 to 4 s).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import BASE
from tests.support.adapter_factory import write_adapter
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.e2e

ADAPTERS = 64
SLOTS = 4  # the shared gateway's --vllm-max-cpu-loras (its default)
CLIENTS = 8
REQUESTS = 64  # three of four on an adapter (each cold: 64 adapters, 4 slots), half streamed
PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def soak_adapters(gateway: GatewayProcess, import_dir: Path) -> Iterator[list[str]]:
    base_config = gateway.data_root / "models" / BASE / "config.json"
    folders = {
        f"soak{i}": write_adapter(import_dir / f"soak{i}", base_config=base_config, seed=i)
        for i in range(ADAPTERS)
    }
    ids = list(gateway.register_adapters(folders, BASE).values())
    yield ids
    with gateway.http() as http:
        for adapter_id in ids:
            http.delete(f"/v1/adapters/{adapter_id}")


def loads_so_far(gateway: GatewayProcess) -> float:
    """Adapter loads of every vLLM replica since the gateway started (its metric)."""
    with gateway.http() as http:
        text = http.get("/metrics").text
    values = re.findall(r"^tunegate_replica_adapter_loads\{.*\} (\S+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


def one_request(client: openai.OpenAI, model: str, stream: bool) -> str:
    """'ok' when the answer came whole and under the model asked for, else what went wrong."""
    try:
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=model, messages=PROMPT, max_tokens=4, temperature=0, stream=True
                )
            )
            answered_as = {c.model for c in chunks}
            finished = any(c.choices and c.choices[0].finish_reason for c in chunks)
        else:
            reply = client.chat.completions.create(
                model=model, messages=PROMPT, max_tokens=4, temperature=0
            )
            answered_as, finished = {reply.model}, bool(reply.choices[0].finish_reason)
    except openai.APIStatusError as error:
        return f"{error.status_code} {getattr(error, 'code', None)}"
    except openai.APIError as error:  # an error event in a stream
        return f"stream error: {error.message}"
    if answered_as != {model}:
        return f"answered as {sorted(answered_as)}"
    return "ok" if finished else "no finish_reason"


def test_no_registered_adapter_404s_under_constant_eviction(gateway, soak_adapters):
    adapters = itertools.cycle(soak_adapters)
    plan = [
        (BASE if i % 4 == 3 else next(adapters), i % 2 == 0)  # (model, streamed)
        for i in range(REQUESTS)
    ]
    client = gateway.client()
    loads_before = loads_so_far(gateway)
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(lambda job: (job[0], one_request(client, *job)), plan))

    failures = Counter(outcome for _, outcome in outcomes if outcome != "ok")
    not_found = [model for model, outcome in outcomes if outcome.startswith("404")]
    assert not not_found, f"registered adapters answered 404: {not_found[:5]}"
    assert not failures, f"failed requests: {dict(failures)}"
    # Eviction was constant: every adapter request of the round-robin was a cold load.
    adapter_requests = sum(1 for model, _ in plan if model != BASE)
    assert loads_so_far(gateway) - loads_before >= adapter_requests - SLOTS
    with gateway.http() as http:
        engines = http.get("/ready").json()["engines"]
    assert all(len(e["adapters"]) <= SLOTS for e in engines if e["engine"] == "vllm")
