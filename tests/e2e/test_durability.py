"""A gateway killed or stopped mid-work: after restart nothing is half-made or lost."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
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
            assert {p.pid for p in exporters} <= {p.pid for p in gateway.tree()}
            gateway.kill()  # no process of its tree, the exporter included, outlives it
        finally:
            if gateway.process.poll() is None:
                gateway.process.kill()

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


def test_sigkill_during_adapter_registration(tmp_path):
    """Killed while copying an adapter in: after restart the adapter is whole, or absent."""
    imports = tmp_path / "imports"
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    folder = write_adapter(
        imports / "big", rank=16, modules=modules, base_config=BASE_CONFIG, seed=4
    )
    data_root = tmp_path / "data"
    data_root.mkdir()
    staging = data_root / "adapters" / ".staging"
    with fake_upstream() as upstream:
        flags = ("--vllm-url", upstream, "--adapter-import-dirs", json.dumps([str(imports)]))
        gateway = start_gateway(data_root, *flags)
        caught = False
        try:
            gateway.wait_ready(120)
            body = {"path": str(folder), "base": EMBEDDED_MODEL_ID, "suffix": "big"}
            sender = threading.Thread(target=_post_quietly, args=(gateway.url, body), daemon=True)
            sender.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not caught:
                caught = staging.is_dir() and any(staging.glob("adapter-*"))
            gateway.kill()  # mid-copy: the staging folder exists
        finally:
            if gateway.process.poll() is None:
                gateway.process.kill()
            gateway.process.wait()
        assert caught, "the registration was never seen in progress"

        again = start_gateway(data_root, *flags)
        try:
            again.wait_ready(120)
            with again.http() as http:
                adapters = http.get("/v1/adapters").json()["data"]
        finally:
            assert again.stop() == 0
    for adapter in adapters:  # whole, if it got in before the kill
        files = sorted(p.name for p in (data_root / "adapters" / adapter["id"]).iterdir())
        assert files == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    assert not staging.exists() or not any(staging.iterdir())
    leftovers = [p.name for p in (data_root / "adapters").iterdir() if not p.name.startswith(".")]
    assert sorted(leftovers) == sorted(a["id"] for a in adapters)


def _post_quietly(url: str, body: dict) -> None:
    try:
        httpx.post(url + "/v1/adapters", json=body, timeout=30)
    except httpx.HTTPError:
        pass  # the gateway is killed under it


def test_sigterm_during_training_stops_the_trainer_and_exits_0(tmp_path):
    gateway = start_gateway(tmp_path, "--no-vllm-enabled", "--no-llamacpp-enabled")
    try:
        gateway.wait_ready(120, path="/health")
        client = gateway.client()
        with (REPO / "tests" / "data" / "json_answers.jsonl").open("rb") as data:
            training = client.files.create(file=data, purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=EMBEDDED_MODEL_ID, training_file=training.id, hyperparameters={"n_epochs": 25}
        )
        deadline = time.monotonic() + 300
        trainers: list[psutil.Process] = []
        while not trainers:
            assert time.monotonic() < deadline
            time.sleep(0.5)
            trainers = processes_with("tuner.job", job.id)
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=60) == 0
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
    _, alive = psutil.wait_procs(trainers, timeout=10)
    assert not alive, "the trainer outlived the gateway's shutdown"
