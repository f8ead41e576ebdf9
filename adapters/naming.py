"""Adapter ids and names.

An adapter id has OpenAI's form ``ft:<base>:<owner>:<suffix>:<unique>``, for
example ``ft:smollm2-135m-instruct:local:jsonbot:ftjob-3f9a1c``. Its suffix is
also a short alias while no other adapter has the same one. Every part is
checked against a strict pattern, so a name can never become a path.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from gateway.errors import InvalidRequestError

# Base ids: as the settings allow. Owner and suffix: OpenAI allows up to 64
# characters in a suffix; they are lowercase here so aliases cannot collide by case.
_BASE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_PART = r"[a-z0-9][a-z0-9_-]{0,63}"
_UNIQUE = r"[a-z0-9][a-z0-9-]{0,63}"
NAME_PATTERN = re.compile(rf"^{_PART}$")
ADAPTER_ID_PATTERN = re.compile(
    rf"^ft:(?P<base>{_BASE}):(?P<owner>{_PART}):(?P<suffix>{_PART})?:(?P<unique>{_UNIQUE})$"
)
DEFAULT_OWNER = "local"


@dataclass(frozen=True)
class AdapterId:
    base: str
    owner: str
    suffix: str  # may be empty, as in OpenAI's ids of jobs created without a suffix
    unique: str

    def __str__(self) -> str:
        return f"ft:{self.base}:{self.owner}:{self.suffix}:{self.unique}"


def parse_adapter_id(text: str) -> AdapterId | None:
    match = ADAPTER_ID_PATTERN.match(text)
    if match is None:
        return None
    parts = match.groupdict()
    return AdapterId(parts["base"], parts["owner"], parts["suffix"] or "", parts["unique"])


def normalise_suffix(suffix: str | None) -> str:
    """A user's suffix as a name: lowercase, other characters as '-', at most 64 long."""
    if not suffix:
        return ""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", suffix.lower()).strip("-_")[:64]
    return check_name(cleaned, "suffix") if cleaned else check_name(suffix, "suffix")


def check_name(value: str, param: str) -> str:
    """A suffix or owner: lowercase letters, digits, '-' and '_' only."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidRequestError(
            f"'{param}' must be 1-64 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit.",
            param=param,
            code="invalid_name",
        )
    return value


def check_lookup_name(text: str, param: str = "id") -> str:
    """An adapter id or alias given by a user; anything else (paths, NUL...) is refused."""
    if parse_adapter_id(text) is None and not NAME_PATTERN.match(text):
        raise InvalidRequestError(
            "Not a valid adapter id or alias.", param=param, code="invalid_name"
        )
    return text


def new_unique_part(prefix: str = "imp") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def make_adapter_id(base: str, suffix: str, unique: str, owner: str = DEFAULT_OWNER) -> AdapterId:
    suffix = check_name(suffix, "suffix") if suffix else ""
    adapter_id = AdapterId(base, check_name(owner, "owner"), suffix, unique)
    if parse_adapter_id(str(adapter_id)) is None:
        raise InvalidRequestError(f"'{base}' cannot be part of an adapter id.", param="base")
    return adapter_id
