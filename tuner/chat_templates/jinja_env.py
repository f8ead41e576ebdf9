"""Rendering a chat template as transformers renders it, without importing transformers.

The environment mirrors ``transformers.utils.chat_template_utils``: a sandbox
with ``trim_blocks`` and ``lstrip_blocks``, loop controls, its ``tojson``
(``ensure_ascii=False``), ``raise_exception`` and ``strftime_now``, and the
``{% generation %}`` tag (rendered as plain content). The gateway's file checks
and the trainer both render through here, so what the checks accept is exactly
what the trainer renders; a unit test holds it equal to transformers' output.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(Exception):
    """A template could not be compiled or rendered (its message says why)."""


class _GenerationTag(Extension):
    """``{% generation %}…{% endgeneration %}`` marks assistant tokens for masks; here it
    only renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the chat template does not compile: {exc}") from exc


def render(
    source: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    special_tokens: dict[str, str] | None = None,
) -> str:
    """The text a template makes of a conversation; ``TemplateError`` if it cannot."""
    try:
        return compile_template(source).render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **(special_tokens or {}),
        )
    except TemplateError:
        raise
    except Exception as exc:  # a template may raise anything on data it cannot express
        raise TemplateError(f"{type(exc).__name__}: {exc}") from exc
