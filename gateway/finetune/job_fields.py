"""The job fields that OpenAI code sends beside the data: ``metadata`` and ``integrations``.

Checked with OpenAI's limits, and refused in OpenAI's words and codes, so that code
that handles OpenAI's errors handles these too (``seed`` and ``suffix`` as well):

- ``metadata``: at most 16 pairs; keys up to 64 characters, values up to 512; strings.
- ``integrations``: ``[{"type": "wandb", "wandb": {"project", "name", "entity", "tags"}}]``.
  The trainer logs to Weights & Biases when the ``wandb`` package is installed where
  the gateway runs (``tuner.integrations``), offline unless the user's environment
  says otherwise; without the package the job is refused, saying what to install.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from gateway.errors import InvalidRequestError

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
WANDB_FIELDS = {"project": str, "name": str, "entity": str, "tags": list}
MAX_INTEGRATIONS = 5

# Python type -> the word OpenAI's messages use for it.
_TYPE_WORDS: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def type_word(value: Any) -> str:
    return _TYPE_WORDS.get(type(value), "a value of another type")


def invalid_type(param: str, expected: type, value: Any) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid type for '{param}': expected {_TYPE_WORDS[expected]}, "
        f"but got {type_word(value)} instead.",
        param=param,
        code="invalid_type",
    )


SEED_MAX = 2**31 - 1
SUFFIX_MAX = 64


def check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, str) and seed.strip().lstrip("-").isdigit():
        seed = int(seed)  # a form field (/v1/fine_tunes) is text
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise invalid_type("seed", int, seed)
    for beyond, word, bound, code in (
        (seed < 0, "below minimum", ">= 0", "integer_below_min_value"),
        (seed > SEED_MAX, "above maximum", f"<= {SEED_MAX}", "integer_above_max_value"),
    ):
        if beyond:
            raise InvalidRequestError(
                f"Invalid 'seed': integer {word} value. Expected a value {bound}, "
                f"but got {seed} instead.",
                param="seed",
                code=code,
            )
    return seed


def check_suffix(suffix: Any) -> str | None:
    if suffix is None:
        return None
    if not isinstance(suffix, str):
        raise invalid_type("suffix", str, suffix)
    if len(suffix) > SUFFIX_MAX:
        raise InvalidRequestError(
            f"Invalid 'suffix': string too long. Expected a string with maximum length "
            f"{SUFFIX_MAX}, but got a string with length {len(suffix)} instead.",
            param="suffix",
            code="string_above_max_length",
        )
    return suffix


def check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise invalid_type("metadata", dict, metadata)
    if len(metadata) > METADATA_MAX_PAIRS:
        raise InvalidRequestError(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} "
            "properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_MAX_KEY:
            raise InvalidRequestError(
                f"Invalid 'metadata': key too long. Expected a key with maximum length "
                f"{METADATA_MAX_KEY}, but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        param = f"metadata.{key}"
        if not isinstance(value, str):
            raise invalid_type(param, str, value)
        if len(value) > METADATA_MAX_VALUE:
            raise InvalidRequestError(
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{METADATA_MAX_VALUE}, but got a string with length {len(value)} instead.",
                param=param,
                code="string_above_max_length",
            )
    return metadata


def check_integrations(integrations: Any) -> list[dict[str, Any]] | None:
    if integrations is None:
        return None
    if not isinstance(integrations, list):
        raise invalid_type("integrations", list, integrations)
    if len(integrations) > MAX_INTEGRATIONS:
        raise InvalidRequestError(
            f"Invalid 'integrations': array too long. Expected an array with maximum length "
            f"{MAX_INTEGRATIONS}, but got an array with length {len(integrations)} instead.",
            param="integrations",
            code="array_above_max_length",
        )
    return [_check_integration(i, item) for i, item in enumerate(integrations)]


def _check_integration(index: int, item: Any) -> dict[str, Any]:
    param = f"integrations[{index}]"
    if not isinstance(item, dict):
        raise invalid_type(param, dict, item)
    kind = item.get("type")
    if kind is None:
        raise _missing(f"{param}.type")
    if kind not in _INTEGRATIONS:
        raise InvalidRequestError(
            f"Invalid value: '{kind}'. Supported values are: 'wandb'.",
            param=f"{param}.type",
            code="invalid_value",
        )
    return _INTEGRATIONS[kind](param, item)


def _check_wandb(param: str, item: dict[str, Any]) -> dict[str, Any]:
    options = item.get("wandb")
    if options is None:
        raise _missing(f"{param}.wandb")
    if not isinstance(options, dict):
        raise invalid_type(f"{param}.wandb", dict, options)
    if options.get("project") is None:
        raise _missing(f"{param}.wandb.project")
    for name, expected in WANDB_FIELDS.items():
        value = options.get(name)
        if value is not None and not isinstance(value, expected):
            raise invalid_type(f"{param}.wandb.{name}", expected, value)
    for i, tag in enumerate(options.get("tags") or []):
        if not isinstance(tag, str):
            raise invalid_type(f"{param}.wandb.tags[{i}]", str, tag)
    if importlib.util.find_spec("wandb") is None:
        raise InvalidRequestError(
            "The wandb integration needs the wandb package where the gateway runs: "
            "pip install wandb (runs are logged offline unless WANDB_MODE says otherwise).",
            param=f"{param}.type",
            code="integration_not_available",
        )
    return {"type": "wandb", "wandb": {k: options.get(k) for k in WANDB_FIELDS}}


def _missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


# Integration type -> its check, which returns the integration as the job shows it.
_INTEGRATIONS = {"wandb": _check_wandb}
