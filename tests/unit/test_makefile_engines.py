"""ENGINE=llamacpp: an install without vLLM, and a gateway started with vLLM off."""

from __future__ import annotations

import hashlib
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
    assert '.[llamacpp]"' in install  # the test tools are make test's (below)
    assert "torch==" in install  # the CPU build, for the tuner
    assert '-c "import peft, trl, transformers, gateway"' in install
    assert "vllm" not in install and "llama-cpp-python" not in install
    serve = dry_run("ENGINE=llamacpp", "serve").splitlines()[-1]
    assert serve.endswith("-m gateway --data-root var --no-vllm-enabled ")


def test_the_default_engine_installs_and_checks_vllm():
    install = dry_run("/nonexistent-venv/.installed-cpu")
    assert '.[cpu]"' in install and '-c "import vllm, peft,' in install
    assert "--no-vllm-enabled" not in dry_run("serve").splitlines()[-1]


def test_the_test_tools_are_installed_for_the_tests_and_not_for_serving():
    assert "dev]" not in dry_run("serve") and "dev]" not in dry_run("ENGINE=llamacpp", "serve")
    test = dry_run("test")
    tools = test[test.index(">> installing the test and lint tools") :]
    tools = tools[: tools.index("touch ")]
    # The dev extra alone: naming the engine's again had pip put back the torchvision
    # that set-up removed, and vLLM no longer imported.
    assert '-e ".[dev]"' in tools and ".[cpu" not in tools
    assert tools.index('-e ".[dev]"') < tools.index("removing $pkg") < tools.index(", pytest")


def test_a_fresh_serve_runs_only_what_its_first_answer_needs():
    """On a fresh machine set-up shares two cores with llama.cpp's build: the checks' base
    answers are made for the tests (a user's first job makes them itself). pip still
    byte-compiles what it installs: where PYTHONDONTWRITEBYTECODE is set, nothing else
    would, and every process start would compile its imports again."""
    serve = dry_run("ENGINE=llamacpp", "serve")
    lines = serve.splitlines()
    installs = [line for line in lines if " -m pip install " in line and "upgrade pip" not in line]
    assert len(installs) == 3 and not any("--no-compile" in line for line in installs)
    assert "tuner.warm_checks" not in serve
    test = dry_run("test")
    assert "tuner.warm_checks" in test and test.index("tuner.warm_checks") < test.index("-m pytest")
    # ...in a make of its own after set-up's (with the model's chain named in the top-level
    # make, a `make -j test` built it there and in set-up's make at once)
    prep = test.index("make --no-print-directory test-files")
    assert test.index("make --no-print-directory -j2 setup-files") < prep
    assert prep < test.index("tuner.warm_checks")


def test_llamacpp_is_compiled_from_the_pinned_sources_and_never_installed_for_serving():
    """llama-server and llama-quantize are built from the llama-cpp-python sdist's
    sources; the Python package itself (an 8-minute compile) is for `make bench` only."""
    import tomllib

    # our patches, applied to the unpacked sources in name order; their checksum names the
    # sources' stamp (a patch added, changed or removed unpacks them again) and is in the
    # build cache's key
    patch_files = sorted((REPO / "patches" / "llama.cpp").glob("*.patch"))
    patches = " ".join(str(p.relative_to(REPO)) for p in patch_files)
    checksum = hashlib.sha256(b"".join(p.read_bytes() for p in patch_files)).hexdigest()[:16]
    sources = dry_run(f"/nonexistent-venv/share/tunegate/llama.cpp/.tunegate-sources-{checksum}")
    download = sources[sources.index("pip download") :]
    assert patches and f"for p in {patches}; do" in download
    assert download.index("tar -xzf") < download.index(f"for p in {patches}")
    assert "patch --quiet --forward --fuzz=0 -p1" in download
    build = dry_run("/nonexistent-venv/share/tunegate/llama.cpp/build/bin/llama-server")
    assert "--target llama-server llama-quantize" in build
    assert f"llama-server llama-quantize {checksum}" in build
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("llama-cpp-python")]
    (bench_pin,) = project["optional-dependencies"]["bench"]
    assert f'"{bench_pin}"' in download  # the sources of the version that `make bench` uses
    # Only this package as source: `--no-binary :all:` had pip build the tools that prepare
    # the sdist's metadata from source as well (235 s here, against 7 s).
    assert "--no-binary llama-cpp-python --no-deps" in download and ":all:" not in download


def test_the_upload_routes_form_parser_is_a_dependency_of_its_own():
    """Starlette parses forms with python-multipart; vLLM happened to bring it in, so an
    install without vLLM answered every upload with a 500 until it was declared here."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("python-multipart") for d in project["dependencies"])
