"""The chat template and tool-call parser each engine process starts with.

The choice is the tuner's (``tuner.chat_templates``): a base whose template
expresses tools keeps it, with the vLLM parser of its family (or the
``tool_call_parser`` setting); a ChatML base that cannot (the embedded
SmolLM2) is served with tunegate's tool template and the "hermes" parser, the
template its adapters were trained with. That template is written once under
``<data_root>/chat_templates/``, named by its hash, and handed to vLLM
(``--chat-template``) and llama-server (``--chat-template-file``). A merged
GGUF carries the template it was trained with in its metadata.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import BaseModelSpec, Settings
from tuner.chat_templates import TemplateChoice, choose_template
from tuner.chat_templates.base_files import gguf_template, hf_template

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedTemplate:
    parser: str | None  # vLLM's --tool-call-parser
    template: str | None  # a template to start the engine with, instead of the model's own


def _served(choice: TemplateChoice | None, parser_setting: str | None) -> ServedTemplate:
    if choice is None:
        return ServedTemplate(parser_setting, None)
    template = choice.template if choice.source == "tunegate" else None
    return ServedTemplate(parser_setting or choice.tool_parser, template)


@functools.lru_cache(maxsize=32)
def _checkpoint_choice(base_dir: Path, _stamp: tuple[int, ...]) -> TemplateChoice | None:
    template, special = hf_template(base_dir)
    return choose_template(template, special)


@functools.lru_cache(maxsize=32)
def _gguf_choice(gguf: Path, _stamp: tuple[int, ...]) -> TemplateChoice | None:
    try:
        template, special = gguf_template(gguf)
    except Exception as exc:  # an unreadable GGUF keeps its own template; llama-server says why
        log.warning("%s: chat template not read: %r", gguf, exc)
        return None
    return choose_template(template, special)


def _stamp(*paths: Path) -> tuple[int, ...]:
    """Changes when a file does, so a cached choice never outlives its source."""
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


def checkpoint_template(spec: BaseModelSpec) -> ServedTemplate:
    if spec.hf_dir is None:
        return ServedTemplate(spec.tool_call_parser, None)
    files = [spec.hf_dir / n for n in ("chat_template.jinja", "tokenizer_config.json")]
    return _served(_checkpoint_choice(spec.hf_dir, _stamp(*files)), spec.tool_call_parser)


def gguf_template_choice(gguf: Path) -> ServedTemplate:
    return _served(_gguf_choice(gguf, _stamp(gguf)), None)


def template_file(settings: Settings, template: str) -> Path:
    """The template on disk, written atomically once, named by its content."""
    digest = hashlib.sha256(template.encode()).hexdigest()[:16]
    path = settings.data_root / "chat_templates" / f"tools-{digest}.jinja"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
        staging.write_text(template, encoding="utf-8")
        os.replace(staging, path)
    return path


def vllm_template_args(settings: Settings, spec: BaseModelSpec) -> list[str]:
    served = checkpoint_template(spec)
    args: list[str] = []
    if served.template is not None:
        args += ["--chat-template", str(template_file(settings, served.template))]
    if served.parser:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", served.parser]
    return args


def llamacpp_template_args(settings: Settings, gguf: Path) -> list[str]:
    """llama-server renders with Jinja and parses tool calls from the template it runs."""
    served = gguf_template_choice(gguf)
    if served.template is None:
        return ["--jinja"]
    return ["--jinja", "--chat-template-file", str(template_file(settings, served.template))]
