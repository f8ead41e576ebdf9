"""The llama.cpp engine's command line, its missing binary, and its metrics re-exposed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.catalog import ModelEntry
from gateway.engines.llamacpp import LlamaCppEngine, llamacpp_argv
from gateway.errors import TunegateError
from gateway.metrics import GatewayMetrics, relabelled_families
from gateway.process_guard import ProcessGuard
from gateway.settings import Settings

# What llama-server --metrics answers (abridged), for one model.
ENGINE_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total {prompt}
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing {processing}
"""


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_each_slot_gets_a_whole_context(tmp_path):
    settings = Settings(data_root=tmp_path, llamacpp_n_ctx=1024, llamacpp_parallel=6)
    argv = llamacpp_argv(settings, "m-gguf", Path("/models/m.gguf"), 4242)
    assert _flag(argv, "--ctx-size") == str(1024 * 6)  # llama-server splits -c among slots
    assert _flag(argv, "--parallel") == "6"
    assert "--no-kv-unified" in argv
    assert _flag(argv, "--cache-ram") == "1024"  # llama-server's own default is 8 GiB
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "4242"
    assert _flag(argv, "--alias") == "m-gguf" and "--metrics" in argv


def test_extra_args_and_binary_come_from_settings(tmp_path):
    settings = Settings(
        data_root=tmp_path,
        llamacpp_server_bin=tmp_path / "llama-server",
        llamacpp_extra_args=["--cache-ram", "0"],
    )
    argv = llamacpp_argv(settings, "m", Path("m.gguf"), 1)
    assert argv[0] == str(tmp_path / "llama-server")
    assert argv[-2:] == ["--cache-ram", "0"]


async def test_a_missing_llama_server_is_a_clear_error_not_a_crash(tmp_path):
    settings = Settings(data_root=tmp_path, llamacpp_server_bin=tmp_path / "absent")
    async with httpx.AsyncClient() as http:
        engine = LlamaCppEngine(settings, http, ProcessGuard(tmp_path))
        entry = ModelEntry("m-gguf", "base", "llama.cpp", "llama.cpp", tmp_path / "m.gguf")
        engine.preload(entry)
        await engine.start()  # the gateway still starts
        with pytest.raises(TunegateError, match="llama-server is missing"):
            await engine.acquire(entry)
        assert not engine.ready() and engine.statuses() == []
        await engine.stop()


def test_engine_metrics_are_renamed_and_labelled_by_model():
    families = relabelled_families(
        [
            (ENGINE_METRICS.format(prompt=12, processing=0), {"model": "a"}),
            (ENGINE_METRICS.format(prompt=30, processing=3), {"model": "b"}),
        ],
        "llamacpp:",
        "tunegate_llamacpp_",
    )
    metrics = GatewayMetrics()
    metrics.set_engine_families(families)
    text = metrics.render().decode()
    assert 'tunegate_llamacpp_prompt_tokens_total{model="a"} 12.0' in text
    assert 'tunegate_llamacpp_prompt_tokens_total{model="b"} 30.0' in text
    assert 'tunegate_llamacpp_requests_processing{model="b"} 3.0' in text
    assert text.count("# TYPE tunegate_llamacpp_prompt_tokens_total counter") == 1
    assert "llamacpp:" not in text
