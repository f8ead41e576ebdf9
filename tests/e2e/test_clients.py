"""What users run: the SDK examples, smoke.sh and the tunegate command line, on a real gateway."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import API_KEY, BASE
from tests.support.gateway_process import REPO

pytestmark = pytest.mark.e2e


def client_env(gateway) -> dict[str, str]:
    return {**os.environ, "TUNEGATE_URL": gateway.api_url, "TUNEGATE_API_KEY": API_KEY}


def run(gateway, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=REPO, env=client_env(gateway), capture_output=True, text=True, timeout=timeout
    )


def test_chat_example(gateway):
    result = run(gateway, sys.executable, "-m", "clients.examples.chat")
    assert result.returncode == 0, result.stderr
    whole, streamed = result.stdout.splitlines()
    assert "paris" in whole.lower() and "paris" in streamed.lower()


def test_switch_adapters_example(gateway, trained_adapters):
    result = run(
        gateway,
        sys.executable,
        "-m",
        "clients.examples.switch_adapters",
        trained_adapters["json"],
        trained_adapters["ahoy"],
    )
    assert result.returncode == 0, result.stderr
    answers = [line.split(": ", 1) for line in result.stdout.splitlines()]
    assert len(answers) == 6
    for model, answer in answers:
        assert answer.startswith('{"answer"') == (model == trained_adapters["json"]), (
            model,
            answer,
        )
        assert answer.startswith("Ahoy") == (model == trained_adapters["ahoy"]), (model, answer)


def test_fine_tune_flow_example(gateway):
    result = run(gateway, sys.executable, "-m", "clients.examples.fine_tune_flow", "--epochs", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert lines["status"] == "succeeded"
    assert lines["adapter"].startswith("Ahoy") and lines["merged"].startswith("Ahoy")


def test_smoke_script_passes(gateway):
    result = run(gateway, "bash", str(REPO / "clients" / "smoke.sh"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "PASS"
    assert "Step " in result.stdout  # the run was followed live


def test_tune_follow_shows_a_progress_bar_in_a_terminal(gateway):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "tune",
            str(REPO / "clients" / "data" / "ahoy.jsonl"),
            "--model",
            BASE,
            "--suffix",
            "clitest",
            "--epochs",
            "1",  # the bar, not what the adapter learns, is under test
            "--follow",
        ],
        cwd=REPO,
        env=client_env(gateway),
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the command ended and closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=30) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "\r\x1b[2K[" in text  # redrawn in place
    assert "step 3/3" in text and "loss " in text and "tok/s" in text and "ETA" in text
    final = text.strip().splitlines()[-1].strip()
    assert final.startswith(f"ft:{BASE}:local:clitest:ftjob-"), text[-500:]


def test_other_commands(gateway):
    models = run(gateway, sys.executable, "-m", "clients.cli", "models")
    assert models.returncode == 0 and f"{BASE}\tvllm\tbase" in models.stdout
    chat = run(
        gateway,
        sys.executable,
        "-m",
        "clients.cli",
        "chat",
        "--temperature",
        "0",
        BASE,
        "What is the capital of France? Answer in one word.",
    )
    assert chat.returncode == 0 and "paris" in chat.stdout.lower()
    jobs = run(gateway, sys.executable, "-m", "clients.cli", "jobs", "list")
    assert jobs.returncode == 0
    job_id = next(
        line.split("\t")[0] for line in jobs.stdout.splitlines() if "\tsucceeded\t" in line
    )
    shown = run(gateway, sys.executable, "-m", "clients.cli", "jobs", "show", job_id)
    assert f'"id": "{job_id}"' in shown.stdout
    adapters = run(gateway, sys.executable, "-m", "clients.cli", "adapters", "list")
    assert adapters.returncode == 0 and f"ft:{BASE}:local:" in adapters.stdout
    upload = run(
        gateway,
        sys.executable,
        "-m",
        "clients.cli",
        "files",
        "upload",
        str(REPO / "clients" / "data" / "ahoy.jsonl"),
    )
    assert upload.returncode == 0 and upload.stdout.startswith("file-")


@pytest.mark.parametrize(
    "argv",
    [
        ("merge", "no-such-adapter"),
        ("jobs", "show", "ftjob-missing"),
        ("chat", "no-such-model", "hi"),
        ("adapters", "rm", "../etc"),
    ],
)
def test_errors_are_one_line(gateway, argv):
    result = run(gateway, sys.executable, "-m", "clients.cli", *argv)
    assert result.returncode == 1
    assert result.stderr.startswith("tunegate: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_no_gateway_is_one_line():
    env = {**os.environ, "TUNEGATE_URL": "http://127.0.0.1:9/v1"}
    result = subprocess.run(
        [sys.executable, "-m", "clients.cli", "models"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "cannot reach a gateway" in result.stderr
