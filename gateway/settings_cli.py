"""Command-line flags generated from the settings model, so the two cannot drift.

Each field ``foo_bar`` becomes ``--foo-bar``; booleans get ``--no-foo-bar``;
lists and nested models take JSON. Only flags given on the command line are
passed on, so environment variables and the config file still apply.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from pydantic.fields import FieldInfo

from gateway.settings import Settings


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (also TUNEGATE_<NAME> environment variables)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = _help(name, field)
        if _is_bool(field.annotation):
            group.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif _is_complex(field.annotation):
            group.add_argument(
                flag,
                dest=name,
                type=json.loads,
                default=argparse.SUPPRESS,
                metavar="JSON",
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    return Settings(**given)


def _help(name: str, field: FieldInfo) -> str:
    default = "" if field.is_required() else f" (default: {_default_text(field)})"
    return (field.description or name.replace("_", " ")) + default


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return json.dumps(field.default_factory())  # type: ignore[call-arg]
    return str(field.default)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _is_complex(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_complex(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, dict)
