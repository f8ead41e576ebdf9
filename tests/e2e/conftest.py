"""One real gateway, with real vLLM and llama.cpp engines, shared by every e2e test.

It runs as users run it (``python -m gateway``) on a temporary data root that
reuses the prepared embedded checkpoint, with an API key set so that the key
check is exercised by every request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from gateway.engines.process import free_port
from gateway.settings import EMBEDDED_MODEL_ID

REPO = Path(__file__).resolve().parents[2]
API_KEY = "e2e-key"
BASE = EMBEDDED_MODEL_ID
BASE_GGUF = f"{EMBEDDED_MODEL_ID}-gguf"
STARTUP_TIMEOUT_S = float(os.environ.get("TUNEGATE_E2E_STARTUP_TIMEOUT_S", "900"))

pytestmark = pytest.mark.e2e


@dataclass
class RunningGateway:
    process: subprocess.Popen[bytes]
    url: str
    data_root: Path
    log_path: Path

    @property
    def api_url(self) -> str:
        return self.url + "/v1"

    def http(self, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def client(self, **kwargs: object) -> openai.OpenAI:
        options: dict[str, object] = {"api_key": API_KEY, "max_retries": 0, "timeout": 120}
        options.update(kwargs)
        return openai.OpenAI(base_url=self.api_url, **options)

    def engine(self, family: str) -> dict:
        with self.http() as http:
            engines = http.get("/ready").json()["engines"]
        return next(e for e in engines if e["engine"] == family)

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with self.http() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited early:\n{self.log_tail()}")
                try:
                    if http.get("/ready", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(1)
        raise TimeoutError(f"gateway not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _link_prepared_checkpoint(data_root: Path) -> None:
    """Reuse the checkpoint `make` derived, so the gateway need not derive it again."""
    prepared = REPO / "var" / "models" / BASE
    if (prepared / "config.json").is_file():
        (data_root / "models").mkdir(parents=True)
        (data_root / "models" / BASE).symlink_to(prepared, target_is_directory=True)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    data_root = tmp_path_factory.mktemp("data-root")
    _link_prepared_checkpoint(data_root)
    port = free_port()
    log_path = data_root / "gateway.log"
    env = {**os.environ, "TUNEGATE_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
    env.pop("TUNEGATE_CONFIG", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--port", str(port), "--data-root", str(data_root),
             "--vllm-max-loras", "2", "--restart-backoff-initial-s", "0.5"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    running = RunningGateway(process, f"http://127.0.0.1:{port}", data_root, log_path)
    try:
        running.wait_ready()
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def client(gateway: RunningGateway) -> openai.OpenAI:
    return gateway.client()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart an engine run last: a restart costs a vLLM start-up."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_engine") is not None)
