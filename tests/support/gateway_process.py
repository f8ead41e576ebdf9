"""Runs a real gateway as users do (``python -m gateway``), for e2e tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil

from gateway.engines.process import free_port
from gateway.process_guard import TAG_VARIABLE, ProcessGuard
from gateway.settings import EMBEDDED_MODEL_ID

REPO = Path(__file__).resolve().parents[2]


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    data_root: Path
    log_path: Path
    api_key: str | None = None

    @property
    def api_url(self) -> str:
        return self.url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=120, **kwargs)

    def client(self, **kwargs: object) -> openai.OpenAI:
        options: dict[str, object] = {
            "api_key": self.api_key or "local",
            "max_retries": 0,
            "timeout": 120,
        }
        options.update(kwargs)
        return openai.OpenAI(base_url=self.api_url, **options)

    def engines(self) -> list[dict]:
        with self.http() as http:
            return http.get("/ready").json()["engines"]

    def engine_serving(self, model: str) -> dict:
        """The engine process that serves ``model`` now."""
        return next(e for e in self.engines() if model in e["models"])

    def wait_ready(self, timeout_s: float, path: str = "/ready") -> None:
        """Until ``path`` answers 200: /ready (engines up) or /health (the gateway alone)."""
        deadline = time.monotonic() + timeout_s
        with self.http() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited early:\n{self.log_tail()}")
                try:
                    if http.get(path, timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"gateway not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def register_adapters(self, folders: dict[str, Path], base: str) -> dict[str, str]:
        """Register each adapter folder (under an import folder) with its name as suffix;
        returns name -> adapter id."""
        ids = {}
        with self.http() as http:
            for name, folder in folders.items():
                response = http.post(
                    "/v1/adapters", json={"path": str(folder), "base": base, "suffix": name}
                )
                assert response.status_code == 201, response.text
                ids[name] = response.json()["id"]
        return ids

    def tree(self) -> list[psutil.Process]:
        """Every process the gateway runs now, its engines' own children included."""
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self, within_s: float = 10) -> list[psutil.Process]:
        """SIGKILL the gateway; assert that no process of its tree outlives it by
        ``within_s`` (the killed tree is returned, for checks after a restart)."""
        tree = self.tree()
        self.process.kill()
        self.process.wait()
        _, alive = psutil.wait_procs(tree, timeout=within_s)
        assert not alive, f"outlived the killed gateway: {[(p.pid, p.name()) for p in alive]}"
        return tree

    def stop(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def link_prepared_checkpoint(data_root: Path) -> None:
    """Reuse the checkpoint `make` derived, so a new data root need not derive it again,
    and the base's answers to the checks' general prompts `make test` kept, as a user's
    data root has them after a first job (copied: a test's gateway writes its own)."""
    prepared = REPO / "var" / "models" / EMBEDDED_MODEL_ID
    target = data_root / "models" / EMBEDDED_MODEL_ID
    if (prepared / "config.json").is_file() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(prepared, target_is_directory=True)
    checks = data_root / "cache" / "checks"
    for kept in (REPO / "var" / "cache" / "checks").glob("base-answers-*.json"):
        checks.mkdir(parents=True, exist_ok=True)
        if not (checks / kept.name).exists():
            shutil.copyfile(kept, checks / kept.name)


def start_gateway(
    data_root: Path, *flags: str, api_key: str | None = None, env: dict[str, str] | None = None
) -> GatewayProcess:
    link_prepared_checkpoint(data_root)
    port = free_port()
    log_path = data_root / "gateway.log"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("TUNEGATE_CONFIG", None)
    environment.pop("TUNEGATE_API_KEY", None)
    if api_key:
        environment["TUNEGATE_API_KEY"] = api_key
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--port",
                str(port),
                "--data-root",
                str(data_root),
                *flags,
            ],
            cwd=REPO,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return GatewayProcess(process, f"http://127.0.0.1:{port}", data_root, log_path, api_key)


def processes_with(*words: str) -> list[psutil.Process]:
    """Processes whose command line holds every one of ``words`` (a trainer, an exporter)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if all(word in command for word in words):
            found.append(process)
    return found


def processes_of_data_root(data_root: Path) -> list[psutil.Process]:
    """Every process a gateway on ``data_root`` started (they carry its tag), wherever it is."""
    tag = ProcessGuard(data_root).tag
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(TAG_VARIABLE) == tag:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
