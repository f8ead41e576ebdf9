"""The settings model, its CLI flags and its generated reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.server import build_parser
from gateway.settings import BaseModelSpec, Settings
from gateway.settings_cli import settings_from_args
from gateway.settings_doc import render

REPO = Path(__file__).resolve().parents[2]


def test_defaults_bind_loopback_port_8000():
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.api_key is None
    assert settings.data_root.is_absolute() and settings.data_root.name == "var"


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEGATE_PORT", "9001")
    monkeypatch.setenv("TUNEGATE_API_KEY", "k")
    monkeypatch.setenv("TUNEGATE_VLLM_EXTRA_ARGS", '["--enforce-eager"]')
    monkeypatch.setenv("TUNEGATE_MODELS", f'[{{"id": "tiny", "gguf": "{tmp_path}/t.gguf"}}]')
    settings = Settings()
    assert settings.port == 9001
    assert settings.api_key.get_secret_value() == "k"
    assert settings.vllm_extra_args == ["--enforce-eager"]
    assert settings.models[0].served_gguf_id == "tiny"


def test_toml_config_file(monkeypatch, tmp_path):
    config = tmp_path / "tunegate.toml"
    config.write_text("port = 8123\nvllm_max_loras = 3\n")
    monkeypatch.setenv("TUNEGATE_CONFIG", str(config))
    monkeypatch.setenv("TUNEGATE_VLLM_MAX_LORAS", "5")  # env beats the file
    settings = Settings()
    assert settings.port == 8123 and settings.vllm_max_loras == 5


def test_cli_flags_override_only_what_is_given(monkeypatch):
    monkeypatch.setenv("TUNEGATE_PORT", "9002")
    args = build_parser().parse_args(["--no-llamacpp-enabled", "--vllm-extra-args", '["-x"]'])
    settings = settings_from_args(args)
    assert settings.port == 9002
    assert settings.llamacpp_enabled is False
    assert settings.vllm_extra_args == ["-x"]


@pytest.mark.parametrize("bad", [{"port": 70000}, {"vllm_max_loras": 0}, {"log_level": "loud"}])
def test_invalid_values_are_refused(bad):
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_base_model_specs():
    both = BaseModelSpec(id="m", hf_dir=Path("/m"), gguf=Path("/m.gguf"))
    assert both.served_gguf_id == "m-gguf"
    assert BaseModelSpec(id="m", gguf=Path("/m.gguf")).served_gguf_id == "m"
    with pytest.raises(ValidationError):
        BaseModelSpec(id="m")
    for bad_id in ("../x", "a b", "", "x" * 200):
        with pytest.raises(ValidationError):
            BaseModelSpec(id=bad_id, gguf=Path("/m.gguf"))


def test_settings_reference_is_up_to_date():
    assert (REPO / "docs" / "settings.md").read_text() == render(), (
        "run: python -m gateway.settings_doc > docs/settings.md"
    )
