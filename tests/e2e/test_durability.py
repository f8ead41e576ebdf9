"""SIGKILL of the gateway during a GGUF export: after restart, no half-made model, nothing lost."""

from __future__ import annotations

import json
import time

import psutil
import pytest

from gateway.settings import EMBEDDED_MODEL_ID
from tests.bench.suites import fake_upstream
from tests.support.adapter_factory import write_adapter
from tests.support.gateway_process import REPO, processes_with, start_gateway

pytestmark = pytest.mark.e2e

BASE_CONFIG = REPO / "var" / "models" / EMBEDDED_MODEL_ID / "config.json"


def test_sigkill_during_a_gguf_export(tmp_path):
    imports = tmp_path / "imports"
    folder = write_adapter(imports / "a", rank=8, base_config=BASE_CONFIG, seed=3)
    data_root = tmp_path / "data"
    data_root.mkdir()
    # An instant stand-in for vLLM: the export runs on the checkpoint, not on the engine.
    with fake_upstream() as upstream:
        flags = ("--vllm-url", upstream, "--adapter-import-dirs", json.dumps([str(imports)]))
        gateway = start_gateway(data_root, *flags)
        try:
            gateway.wait_ready(120)
            with gateway.http() as http:
                registered = http.post(
                    "/v1/adapters",
                    json={"path": str(folder), "base": EMBEDDED_MODEL_ID, "suffix": "k"},
                ).json()
                merge = http.post(f"/v1/adapters/{registered['id']}/merge", json={}).json()
                deadline = time.monotonic() + 60
                exporters: list[psutil.Process] = []
                while not exporters:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                    exporters = processes_with("tuner.export", str(data_root))
                time.sleep(3)  # well into the merge
        finally:
            gateway.process.kill()
            gateway.process.wait()
        _, alive = psutil.wait_procs(exporters, timeout=10)
        assert not alive, "the exporter outlived the gateway"

        again = start_gateway(data_root, *flags)
        try:
            again.wait_ready(120)
            with again.http() as http:
                state = http.get(f"/v1/merges/{merge['id']}").json()
                assert state["status"] == "failed" and state["error"]["code"] == "server_restarted"
                models = {m["id"] for m in http.get("/v1/models").json()["data"]}
                assert registered["id"] in models  # the adapter is intact
                assert merge["model"] not in models
        finally:
            assert again.stop() == 0
    assert not [p.name for p in (data_root / "merged").iterdir()]
