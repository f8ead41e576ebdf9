"""ENGINE=llamacpp: an install without vLLM, and a gateway started with vLLM off."""

from __future__ import annotations

import os
import subprocess

from tests.support.gateway_process import REPO


def dry_run(*args: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", *args],
        cwd=REPO,
        env={**os.environ, "VENV": "/nonexistent-venv"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_llamacpp_engine_installs_no_vllm_and_serves_with_vllm_off():
    install = dry_run("ENGINE=llamacpp", "/nonexistent-venv/.installed-llamacpp")
    assert '.[llamacpp,dev]"' in install
    assert "torch==" in install  # the CPU build, for the tuner
    assert '-c "import llama_cpp, peft, trl, transformers, gateway"' in install
    assert "vllm" not in install
    serve = dry_run("ENGINE=llamacpp", "serve").splitlines()[-1]
    assert serve.endswith("-m gateway --data-root var --no-vllm-enabled ")


def test_the_default_engine_installs_and_checks_vllm():
    install = dry_run("/nonexistent-venv/.installed-cpu")
    assert '.[cpu,dev]"' in install and '-c "import vllm, llama_cpp,' in install
    assert "--no-vllm-enabled" not in dry_run("serve").splitlines()[-1]
