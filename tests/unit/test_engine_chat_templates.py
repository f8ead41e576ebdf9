"""The chat template and tool-call parser each engine process is started with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.engines.chat_templates import llamacpp_template_args, vllm_template_args
from gateway.engines.llamacpp import llamacpp_argv
from gateway.engines.vllm import vllm_argv
from gateway.settings import BaseModelSpec, Settings
from tests.unit.test_tool_template import PLAIN_NOT_CHATML, QWEN_LIKE, SMOLLM2
from tuner.chat_templates import choose_template


def base_dir(folder: Path, template: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    (folder / "chat_template.jinja").write_text(template)
    return folder


def after(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_a_chatml_base_without_tools_is_served_with_the_tool_template_and_hermes(tmp_path):
    settings = Settings(data_root=tmp_path / "data")
    spec = BaseModelSpec(id="smol", hf_dir=base_dir(tmp_path / "smol", SMOLLM2))
    argv = vllm_argv(settings, spec, 8001)
    template_file = Path(after(argv, "--chat-template"))
    assert template_file.parent == settings.data_root / "chat_templates"
    assert template_file.read_text() == choose_template(SMOLLM2).template  # what the tuner uses
    assert after(argv, "--tool-call-parser") == "hermes" and "--enable-auto-tool-choice" in argv
    assert vllm_argv(settings, spec, 8002)[argv.index("--chat-template") + 1] == str(template_file)


@pytest.mark.parametrize(
    ("template", "setting", "parser"),
    [
        (QWEN_LIKE, None, "hermes"),
        (QWEN_LIKE, "qwen3_xml", "qwen3_xml"),
        (PLAIN_NOT_CHATML, None, None),
    ],
)
def test_other_bases_keep_their_own_template(tmp_path, template, setting, parser):
    spec = BaseModelSpec(
        id="other", hf_dir=base_dir(tmp_path / "other", template), tool_call_parser=setting
    )
    argv = vllm_template_args(Settings(data_root=tmp_path), spec)
    assert "--chat-template" not in argv
    assert after(argv, "--tool-call-parser") == parser


def _gguf(path: Path, template: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_llama_server_gets_the_tool_template_for_a_chatml_gguf_and_jinja_always(tmp_path):
    settings = Settings(data_root=tmp_path / "data")
    plain = llamacpp_template_args(settings, _gguf(tmp_path / "smol.gguf", SMOLLM2))
    assert plain[0] == "--jinja"
    assert Path(plain[plain.index("--chat-template-file") + 1]).read_text() == (
        choose_template(SMOLLM2).template
    )
    # A merged model carries the tool template already: llama-server takes it from there.
    merged = _gguf(tmp_path / "merged.gguf", choose_template(SMOLLM2).template)
    assert llamacpp_template_args(settings, merged) == ["--jinja"]
    argv = llamacpp_argv(settings, "m", merged, 8003)
    assert "--jinja" in argv and "--chat-template-file" not in argv
