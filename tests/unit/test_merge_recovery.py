"""A gateway killed during a GGUF export: the merge is failed and no half-written file stays."""

from __future__ import annotations

import json

import pytest

from gateway.errors import InvalidRequestError
from gateway.finetune.merges import MergeService, check_quantization, merged_model_id


def test_an_interrupted_export_is_failed_and_its_leftovers_removed(gateway):
    runtime = gateway.app.state.runtime
    merges: MergeService = runtime.merges
    merged = merges.folder
    merged.mkdir(parents=True, exist_ok=True)
    model = merged_model_id("ft:base:local:bot:ftjob-1", "q8_0")
    merges._db.execute(  # what a killed gateway leaves in the store
        "INSERT INTO merges (id, status, body) VALUES (?,?,?)",
        ("merge-1", "running", json.dumps({"id": "merge-1", "status": "running", "model": model})),
    )
    (merged / f".{model}.gguf.partial").write_bytes(b"GGUF half")
    (merged / f"{model}.gguf").write_bytes(b"GGUF without manifest")  # never served without one

    merges.start()

    state = merges.get("merge-1")
    assert state["status"] == "failed" and state["error"]["code"] == "server_restarted"
    assert not (merged / f".{model}.gguf.partial").exists()
    assert not (merged / f"{model}.gguf").exists()
    assert model not in runtime.catalog


def test_quantizations_are_a_closed_list():
    assert check_quantization("q4_k_m") == "q4_k_m"
    for bad in ("q3_z", "", None, "../x"):
        with pytest.raises(InvalidRequestError):
            check_quantization(bad)
