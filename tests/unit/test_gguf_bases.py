"""Bases given only as a GGUF: their HF checkpoint derived once in the background, and
what a fine-tuning request on them gets meanwhile (503), after (trainable), or when
transformers cannot read their architecture (400 that says so)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.catalog import ModelCatalog, ModelEntry
from gateway.engines.llamacpp import LlamaCppEngine
from gateway.errors import EngineUnavailableError, InvalidRequestError
from gateway.gguf_bases import GgufOnlyBases, refuse_untrainable
from gateway.process_guard import ProcessGuard
from gateway.settings import BaseModelSpec, Settings
from tests.unit.test_fine_tuning_routes import upload
from tests.unit.test_routing import assert_openai_error


class FakeDerive:
    """Stands in for the derivation subprocess; finishes when the test says so."""

    def __init__(self, status: int = 0, last_line: str = "checkpoint ready") -> None:
        self.status, self.last_line = status, last_line
        self.calls: list[Path] = []
        self.done = asyncio.Event()

    async def __call__(self, gguf: Path, out: Path, log_path: Path) -> tuple[int, str]:
        self.calls.append(gguf)
        await self.done.wait()
        if self.status == 0:
            out.mkdir(parents=True)
            (out / "config.json").write_text("{}")
            (out / "model.safetensors").write_bytes(b"")
        return self.status, self.last_line


class Setup:
    def __init__(self, tmp_path: Path, derive: FakeDerive) -> None:
        self.settings = Settings(data_root=tmp_path)
        self.catalog = ModelCatalog()
        self.http = httpx.AsyncClient()
        self.engine = LlamaCppEngine(self.settings, self.http, ProcessGuard(tmp_path))
        self.spec = BaseModelSpec(id="pulled", gguf=tmp_path / "pulled.q4_k_m.gguf")
        self.entry = ModelEntry("pulled", "base", "llama.cpp", "llama.cpp", self.spec.gguf)
        self.catalog.add(self.entry)
        self.engine.add_base(self.entry, "pulled", None)
        self.base_dirs: dict[str, Path] = {}
        self.bases = GgufOnlyBases(
            self.settings, ProcessGuard(tmp_path), self.catalog, self.engine, self.base_dirs, derive
        )


async def test_a_gguf_only_base_becomes_trainable_once_derived(tmp_path):
    derive = FakeDerive()
    setup = Setup(tmp_path, derive)
    setup.bases.start([setup.spec])
    await asyncio.sleep(0)
    assert derive.calls == [setup.spec.gguf]
    with pytest.raises(EngineUnavailableError, match="being derived") as preparing:
        refuse_untrainable(setup.catalog, "pulled")
    assert preparing.value.status_code == 503
    assert "pulled" not in setup.base_dirs

    derive.done.set()
    await setup.bases.wait()
    out = setup.settings.models_dir / "pulled"
    assert setup.base_dirs == {"pulled": out}
    refuse_untrainable(setup.catalog, "pulled")  # trainable: no error
    assert setup.entry.to_openai()["fine_tuning"]["status"] == "ready"
    assert setup.engine._bases["pulled"].hf_dir == out  # its adapters convert against it

    again = Setup(tmp_path, FakeDerive())  # the next start finds the checkpoint
    again.bases.start([again.spec])
    assert again.base_dirs == {"pulled": out}


async def test_an_architecture_transformers_cannot_read_is_a_400_that_says_so(tmp_path):
    reason = "transformers cannot read the 'mamba9' architecture from a GGUF, so this model ..."
    derive = FakeDerive(status=3, last_line=reason)
    derive.done.set()
    setup = Setup(tmp_path, derive)
    setup.bases.start([setup.spec])
    await setup.bases.wait()
    with pytest.raises(InvalidRequestError) as refused:
        refuse_untrainable(setup.catalog, "pulled")
    assert refused.value.status_code == 400 and refused.value.code == "model_not_trainable"
    assert refused.value.message == reason and setup.base_dirs == {}


async def test_other_bases_are_left_alone(tmp_path):
    setup = Setup(tmp_path, FakeDerive())
    both = BaseModelSpec(id="both", hf_dir=tmp_path / "hf", gguf=tmp_path / "b.gguf")
    setup.bases.start([both])
    assert setup.bases._tasks == set()
    refuse_untrainable(setup.catalog, "nothing-here")


async def test_the_fine_tuning_route_answers_with_the_reason(gateway):
    file_id = (await upload(gateway))["id"]
    runtime = gateway.app.state.runtime
    runtime.catalog.resolve("base-gguf").extra["fine_tuning"] = {
        "status": "unsupported",
        "message": "transformers cannot read the 'mamba9' architecture from a GGUF.",
    }
    response = await gateway.post(
        "/v1/fine_tuning/jobs", json={"model": "base-gguf", "training_file": file_id}
    )
    error = assert_openai_error(response, 400, "model_not_trainable")
    assert "mamba9" in error["message"] and error["param"] == "model"


def empty_gguf(path: Path, architecture: str) -> Path:
    """A GGUF with a header and no tensors: enough for what reads the header."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_architecture_check_reads_the_gguf_header(tmp_path):
    from tuner.gguf_checkpoint import gguf_architecture, unsupported_reason

    path = empty_gguf(tmp_path / "odd.gguf", "tunegate-test-arch")
    assert gguf_architecture(path) == "tunegate-test-arch"
    reason = unsupported_reason(path)
    assert reason is not None and "'tunegate-test-arch'" in reason and "llama" in reason


def test_a_derivation_parses_the_gguf_once_and_puts_gguf_back(tmp_path):
    """transformers' loader parses the file once for the config, the tokenizer and the
    weights each: within a derivation the three share one parse (and one tensor-name
    table per architecture); after it, gguf is as it was."""
    import gguf

    from tuner.prepare_base import _gguf_parsed_once

    path = empty_gguf(tmp_path / "tiny.gguf", "llama")
    make_reader, make_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with _gguf_parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again and isinstance(first, make_reader)
        assert gguf.GGUFReader(path, "c") is not first  # another mode: another reader
        table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is table
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not table
    assert gguf.GGUFReader is make_reader and gguf.get_tensor_name_map is make_name_map
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
