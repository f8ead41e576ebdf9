"""A base model's own chat template and special tokens, read from its files.

From an HF checkpoint folder (``chat_template.jinja``, else ``tokenizer_config.json``)
or from a GGUF's metadata (``tokenizer.chat_template``), without loading the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _named_template(value: Any) -> str | None:
    """transformers allows a list of named templates; "default" is the one used by default."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default")
    return None


def hf_template(base_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The checkpoint's chat template (None if it has none) and its special tokens' text."""
    config_file = base_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    template_file = base_dir / "chat_template.jinja"
    template = (
        template_file.read_text(encoding="utf-8")
        if template_file.is_file()
        else _named_template(config.get("chat_template"))
    )
    tokens = {name: _token_text(config.get(name)) for name in _SPECIAL_TOKENS}
    return template, {name: text for name, text in tokens.items() if text is not None}


def gguf_template(gguf: Path) -> tuple[str | None, dict[str, str]]:
    """A GGUF's chat template and the text of its BOS and EOS tokens."""
    from gguf import GGUFReader  # the gguf package; only llama.cpp paths need it

    reader = GGUFReader(str(gguf), "r")
    fields = reader.fields

    def string(name: str) -> str | None:
        field = fields.get(name)
        if field is None:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8")

    tokens: dict[str, str] = {}
    vocab = fields.get("tokenizer.ggml.tokens")
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is None or vocab is None:
            continue
        token_id = int(field.parts[field.data[0]][0])
        if token_id < len(vocab.data):
            tokens[name] = bytes(vocab.parts[vocab.data[token_id]]).decode("utf-8")
    return string("tokenizer.chat_template"), tokens
