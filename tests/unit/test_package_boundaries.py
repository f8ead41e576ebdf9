"""The tuner and the adapter registry stand on their own: neither imports the gateway.

The trainer runs in processes of its own and the registry is a library; both
are imported here in a fresh interpreter in which ``gateway`` cannot be imported.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

from tests.support.gateway_process import REPO

_BLOCK_GATEWAY = """
import importlib, importlib.abc, sys

class NoGateway(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "gateway" or name.startswith("gateway."):
            raise ImportError(f"{name} imported while importing {module}")
        return None

sys.meta_path.insert(0, NoGateway())
for module in sys.argv[1:]:
    importlib.import_module(module)
print(sorted(m for m in sys.modules if m.split(".")[0] == "gateway"))
"""


def _modules(package: str) -> list[str]:
    folder = REPO / package
    return [f"{package}.{info.name}" for info in pkgutil.iter_modules([str(folder)])]


@pytest.mark.parametrize("package", ["adapters", "tuner"])
def test_every_module_imports_without_the_gateway(package):
    done = subprocess.run(
        [sys.executable, "-c", _BLOCK_GATEWAY, package, *_modules(package)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_job_spec_is_its_own_module_and_methods_do_not_import_the_run_loop():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tuner.methods, tuner.job_spec; print('tuner.job' in sys.modules)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
