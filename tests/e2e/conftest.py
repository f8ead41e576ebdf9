"""One real gateway, with real vLLM and llama.cpp engines, shared by every e2e test.

It runs as users run it (``python -m gateway``) on a temporary data root that
reuses the prepared embedded checkpoint, with an API key set so that the key
check is exercised by every request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.settings import EMBEDDED_MODEL_ID
from tests.support.gateway_process import GatewayProcess, start_gateway
from tests.support.training import DATA, train_adapters

API_KEY = "e2e-key"
BASE = EMBEDDED_MODEL_ID
BASE_GGUF = f"{EMBEDDED_MODEL_ID}-gguf"
STARTUP_TIMEOUT_S = float(os.environ.get("TUNEGATE_E2E_STARTUP_TIMEOUT_S", "900"))


@pytest.fixture(scope="session")
def import_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder adapters may be imported from by path."""
    return tmp_path_factory.mktemp("imports")


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, import_dir: Path) -> Iterator[GatewayProcess]:
    data_root = tmp_path_factory.mktemp("data-root")
    running = start_gateway(
        data_root,
        "--restart-backoff-initial-s",
        "0.5",
        # The checks after each job (drift, repetition; tens of seconds each) and the
        # leave-some-out fold of small sets (about 3/4 of a training again) are asserted
        # on the llama.cpp-only gateway's job (test_llamacpp_only) and in every trial; the
        # shared gateway's many small trainings skip them.
        "--no-finetune-after-job-checks",
        "--adapter-import-dirs",
        json.dumps([str(import_dir)]),
        api_key=API_KEY,
    )
    try:
        running.wait_ready(STARTUP_TIMEOUT_S)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return gateway.client()


@pytest.fixture(scope="session")
def trained_adapters(gateway: GatewayProcess, import_dir: Path) -> dict[str, str]:
    """Two adapters with clearly different behaviour, trained now on SmolLM2 and registered.

    One answers in a fixed JSON shape, one starts every answer with "Ahoy!".
    Returns behaviour name -> adapter id.
    """
    trained = train_adapters(
        {name: (DATA / f"{name}_answers.jsonl", import_dir / name) for name in ("json", "ahoy")}
    )
    return gateway.register_adapters(trained, BASE)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A failed test shows what its gateways (the shared one, a module's own) logged
    last: a failure seen only in CI can be read from its output."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, GatewayProcess):
                report.sections.append((f"{name}'s log, last lines", value.log_tail(40)))
    return report


# e2e modules marked `pending` are written against real engines but have not yet run
# green end to end; `make test-pending` runs them (with this variable set), and a module
# loses the mark once it has passed there.
PENDING_VARIABLE = "TUNEGATE_E2E_PENDING"
# e2e modules marked `long` have run green but cost more than `make test`'s time budget
# leaves (CI's two cores); `make test-long` runs them (with this variable set).
LONG_VARIABLE = "TUNEGATE_E2E_LONG"
# marker -> (the variable that runs it, why it is skipped without)
OPT_IN = {
    "pending": (PENDING_VARIABLE, "not yet run green on real engines"),
    "long": (LONG_VARIABLE, "green, but longer than make test's time budget"),
}


def pytest_configure(config: pytest.Config) -> None:
    for marker, (variable, why) in OPT_IN.items():
        config.addinivalue_line("markers", f"{marker}: e2e {why}; runs only with {variable}=1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart an engine run last: a restart costs a vLLM start-up."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_engine") is not None)
    for marker, (variable, why) in OPT_IN.items():
        if os.environ.get(variable) == "1":
            continue
        skip = pytest.mark.skip(reason=f"{marker}: {why} ({variable}=1 runs it)")
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)
