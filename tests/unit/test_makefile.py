"""Set-up without a compiler says so in one line, before any work starts."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.gateway_process import REPO

MISSING = "set-up needs a C/C++ compiler, cmake and patch"


def make_toolchain(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "toolchain"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("missing", ["CXX", "CC"])
def test_a_missing_compiler_is_one_clear_line(missing):
    result = make_toolchain(**{missing: "no-such-compiler"})
    assert result.returncode != 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and MISSING in lines[0], result.stdout
    assert "apt-get install g++ cmake patch" in lines[0]


@pytest.mark.skipif(
    not (shutil.which("cmake") and shutil.which("c++") and shutil.which("cc")),
    reason="this machine has no C/C++ toolchain",
)
def test_a_machine_with_a_toolchain_passes_the_check():
    result = make_toolchain()
    assert result.returncode == 0 and result.stdout == "", result.stdout
