"""The q4_k_m step of an export: llama.cpp's own ``llama-quantize``, built by ``make setup``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tuner.export import QUANTIZATIONS, QUANTIZER, ExportError, quantize


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_quantizer_is_called_with_source_target_and_type(tmp_path):
    seen = tmp_path / "argv"
    fake = script(tmp_path / "llama-quantize", f'echo "$@" > {seen}; cp "$1" "$2"')
    source = tmp_path / "model-f16.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "model-q4_k_m.gguf"
    assert quantize(source, target, QUANTIZATIONS["q4_k_m"][1], fake) == target
    assert seen.read_text().split() == [str(source), str(target), "Q4_K_M"]
    assert target.read_bytes() == b"GGUF"


def test_a_failing_or_missing_quantizer_is_an_export_error(tmp_path, capsys):
    source = tmp_path / "model-f16.gguf"
    source.write_bytes(b"GGUF")
    failing = script(tmp_path / "llama-quantize", "echo 'invalid model file' ; exit 1")
    with pytest.raises(ExportError, match="exit status 1"):
        quantize(source, tmp_path / "out.gguf", "Q4_K_M", failing)
    assert "invalid model file" in capsys.readouterr().err  # its output reaches the job's log
    with pytest.raises(ExportError, match="make setup"):
        quantize(source, tmp_path / "out.gguf", "Q4_K_M", tmp_path / "missing")


def test_make_setup_builds_the_quantizer_where_exports_look_for_it():
    assert QUANTIZER.parent.name == "bin" and QUANTIZER.name == "llama-quantize"
    assert QUANTIZER.parents[2].name == "llama.cpp"  # beside llama-server, in the venv
