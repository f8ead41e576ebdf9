"""Writes the settings reference (docs/settings.md) from the settings model itself.

    python -m gateway.settings_doc > docs/settings.md

A unit test compares the file with this output, so the docs cannot drift.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic.fields import FieldInfo

from gateway.settings import Settings


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return f"`{json.dumps(field.default_factory())}`"  # type: ignore[call-arg]
    return "unset" if field.default is None else f"`{field.default}`"


def _type(field: FieldInfo) -> str:
    return _type_text(field.annotation)


def _type_text(annotation: Any) -> str:
    """A type as a reader writes it: constraints (``Annotated``) left out."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(arg) for arg in args)
    if origin is list:
        return f"list[{', '.join(_type_text(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation)
    for module in ("typing.", "pathlib.", "pydantic.types.", "gateway.settings."):
        text = text.replace(module, "")
    return text


def render() -> str:
    lines = [
        "# Settings reference",
        "",
        "Generated from `gateway/settings.py` by `python -m gateway.settings_doc`; do not edit.",
        "",
        "Each setting can be given, highest priority first, as a command-line flag",
        "(`python -m gateway --flag` or `tunegate serve --flag`), as an environment variable",
        "`TUNEGATE_<NAME>`, or in the TOML file named by `TUNEGATE_CONFIG`",
        "(default `./tunegate.toml`, when it exists). Lists and objects take JSON.",
        "",
        "| flag | environment | type | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "TUNEGATE_" + name.upper()
        text = (field.description or "").replace("|", "\\|")
        type_text = _type(field).replace("|", "\\|")
        lines.append(f"| `{flag}` | `{env}` | `{type_text}` | {_default(field)} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
