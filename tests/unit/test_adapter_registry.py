"""The adapter registry: naming, validation, safety and atomicity (synthetic adapters)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from adapters.errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    InvalidAdapterError,
    InvalidAdapterNameError,
)
from adapters.naming import check_lookup_name, make_adapter_id, normalise_suffix, parse_adapter_id
from adapters.registry import AdapterRegistry, RegisterRequest
from tests.support.adapter_factory import write_adapter, write_base


@pytest.fixture
def imports(tmp_path) -> Path:
    folder = tmp_path / "imports"
    folder.mkdir()
    return folder


@pytest.fixture
def registry(tmp_path, imports) -> AdapterRegistry:
    base = write_base(tmp_path / "models" / "base")
    registry = AdapterRegistry(tmp_path / "adapters", [imports], {"base": base}, max_rank=16)
    registry.load()
    return registry


def request(folder: Path, **kwargs) -> RegisterRequest:
    return RegisterRequest(
        folder=folder, base=kwargs.pop("base", "base"), suffix=kwargs.pop("suffix", "bot"), **kwargs
    )


def test_ids_have_the_openai_form():
    adapter_id = make_adapter_id("smollm2-135m-instruct", "jsonbot", "ftjob-abc123")
    assert str(adapter_id) == "ft:smollm2-135m-instruct:local:jsonbot:ftjob-abc123"
    assert parse_adapter_id(str(adapter_id)) == adapter_id
    assert str(make_adapter_id("base", "", "ftjob-1")) == "ft:base:local::ftjob-1"  # no suffix
    assert parse_adapter_id("ft:base:local::ftjob-1").suffix == ""
    assert normalise_suffix("My Bot!") == "my-bot" and normalise_suffix(None) == ""
    for bad in ("Bad Suffix", "../x", "a/b", "x" * 65, "a\x00b", ":"):
        with pytest.raises(InvalidAdapterNameError):
            make_adapter_id("base", bad, "u1")
    for bad in ("../x", "/etc/passwd", "..", "a\x00", "ft:../x:local:s:u"):
        with pytest.raises(InvalidAdapterNameError):
            check_lookup_name(bad)


def test_register_writes_files_and_manifest(registry, imports):
    manifest = registry.register(request(write_adapter(imports / "a"), unique="ftjob-1"))
    assert manifest.id == "ft:base:local:bot:ftjob-1"
    assert (manifest.alias, manifest.rank, manifest.target_modules) == (
        "bot",
        4,
        ("q_proj", "v_proj"),
    )
    assert len(manifest.weights_sha256) == 64
    assert manifest.eos_token == "<|im_end|>" and manifest.chat_template
    folder = registry.folder_of(manifest.id)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    assert registry.get(manifest.id) == manifest
    with pytest.raises(AdapterExistsError):
        registry.register(request(imports / "a", unique="ftjob-1"))


def test_registered_adapters_survive_a_restart(registry, imports, tmp_path):
    manifest = registry.register(request(write_adapter(imports / "a")))
    again = AdapterRegistry(registry.root, [imports], {"base": tmp_path / "models" / "base"}, 16)
    assert [m.id for m in again.load()] == [manifest.id]


def test_remove(registry, imports):
    manifest = registry.register(request(write_adapter(imports / "a")))
    registry.remove(manifest.id)
    assert not registry.folder_of(manifest.id).exists()
    with pytest.raises(AdapterNotFoundError):
        registry.get(manifest.id)


def test_interrupted_writes_leave_nothing_servable(registry, imports, tmp_path):
    """A kill mid-register leaves a staging folder, or a folder without manifest: both vanish."""
    (registry.root / ".staging" / "adapter-x").mkdir(parents=True)
    write_adapter(registry.root / ".staging" / "adapter-x")
    half = write_adapter(registry.root / "ft:base:local:half:u1")  # no manifest.json
    again = AdapterRegistry(registry.root, [imports], {"base": tmp_path / "models" / "base"}, 16)
    assert again.load() == []
    assert not (registry.root / ".staging").exists()
    assert half.exists()  # never served, but not silently deleted either


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write_adapter(d, rank=32), "rank 32 is above"),
        (lambda d: write_adapter(d, hidden=128), "does not fit base"),
        (lambda d: write_adapter(d, layers=3), "has 2 layers"),
        (lambda d: write_adapter(d, config_overrides={"peft_type": "IA3"}), "Only LoRA"),
        (
            lambda d: write_adapter(d, config_overrides={"modules_to_save": ["lm_head"]}),
            "modules_to_save",
        ),
    ],
    ids=["rank", "wrong-base", "layers", "not-lora", "modules-to-save"],
)
def test_invalid_adapters_are_refused(registry, imports, make, message):
    with pytest.raises(InvalidAdapterError, match=message):
        registry.register(request(make(imports / "bad")))
    assert registry.list() == []


def test_unknown_base_is_refused(registry, imports):
    with pytest.raises(InvalidAdapterError, match="not a base model"):
        registry.register(request(write_adapter(imports / "a"), base="other"))


def test_paths_outside_the_import_folders_are_refused(registry, imports, tmp_path):
    outside = write_adapter(tmp_path / "outside")
    for path in (outside, imports / ".." / "outside", Path("/etc"), Path("relative/../../x")):
        with pytest.raises(InvalidAdapterError, match="outside"):
            registry.register(request(path))
    (imports / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidAdapterError, match="outside"):
        registry.register(request(imports / "link"))
    partly = imports / "partly"
    partly.mkdir()
    (partly / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    (partly / "adapter_config.json").write_text((outside / "adapter_config.json").read_text())
    with pytest.raises(InvalidAdapterError, match="outside"):
        registry.register(request(partly))
    with pytest.raises(InvalidAdapterError, match="NUL"):
        registry.register(request(Path(str(imports) + "/a\x00b")))


class _Canary:
    """Unpickling this creates a file: proof that a pickle was (never) loaded."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_adapters_are_refused_and_never_unpickled(registry, imports, tmp_path):
    canary = tmp_path / "canary"
    _Canary.path = str(canary)
    folder = imports / "pickled"
    folder.mkdir()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Canary()))
    write_adapter(tmp_path / "cfg")
    os.replace(tmp_path / "cfg" / "adapter_config.json", folder / "adapter_config.json")
    with pytest.raises(InvalidAdapterError, match="Only safetensors"):
        registry.register(request(folder))
    assert not canary.exists()


def test_corrupt_safetensors_is_refused(registry, imports):
    folder = write_adapter(imports / "a")
    (folder / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"not json")
    with pytest.raises(InvalidAdapterError, match="corrupt"):
        registry.register(request(folder))
