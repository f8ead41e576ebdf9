"""Adapter ids and names.

An adapter id has OpenAI's form ``ft:<base>:<owner>:<suffix>:<unique>``, for
example ``ft:smollm2-135m-instruct:local:jsonbot:ftjob-3f9a1c``. Its suffix is
also a short alias while no other adapter has the same one. A checkpoint of a
fine-tuning job adds ``:ckpt-step-<N>``, as OpenAI's checkpoint models do; it
has no alias. Every part is checked against a strict pattern, so a name can
never become a path.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from adapters.errors import InvalidAdapterNameError

# Base ids: as the settings allow. Owner and suffix: OpenAI allows up to 64
# characters in a suffix; they are lowercase here so aliases cannot collide by case.
_BASE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_PART = r"[a-z0-9][a-z0-9_-]{0,63}"
_UNIQUE = r"[a-z0-9][a-z0-9-]{0,63}"
NAME_PATTERN = re.compile(rf"^{_PART}$")
ADAPTER_ID_PATTERN = re.compile(
    rf"^ft:(?P<base>{_BASE}):(?P<owner>{_PART}):(?P<suffix>{_PART})?:(?P<unique>{_UNIQUE})"
    r"(?::ckpt-step-(?P<step>[0-9]{1,9}))?$"
)
DEFAULT_OWNER = "local"


@dataclass(frozen=True)
class AdapterId:
    base: str
    owner: str
    suffix: str  # may be empty, as in OpenAI's ids of jobs created without a suffix
    unique: str
    checkpoint_step: int | None = None

    def __str__(self) -> str:
        text = f"ft:{self.base}:{self.owner}:{self.suffix}:{self.unique}"
        return text if self.checkpoint_step is None else f"{text}:ckpt-step-{self.checkpoint_step}"

    def at_checkpoint(self, step: int) -> AdapterId:
        """The id of this adapter's checkpoint at ``step``."""
        return AdapterId(self.base, self.owner, self.suffix, self.unique, step)


def parse_adapter_id(text: str) -> AdapterId | None:
    match = ADAPTER_ID_PATTERN.match(text)
    if match is None:
        return None
    parts = match.groupdict()
    step = int(parts["step"]) if parts["step"] is not None else None
    return AdapterId(parts["base"], parts["owner"], parts["suffix"] or "", parts["unique"], step)


def normalise_suffix(suffix: str | None) -> str:
    """A user's suffix as a name: lowercase, other characters as '-', at most 64 long."""
    if not suffix:
        return ""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", suffix.lower()).strip("-_")[:64]
    return check_name(cleaned, "suffix") if cleaned else check_name(suffix, "suffix")


def check_name(value: str, param: str) -> str:
    """A suffix or owner: lowercase letters, digits, '-' and '_' only."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidAdapterNameError(
            f"'{param}' must be 1-64 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit.",
            param=param,
            code="invalid_name",
        )
    return value


def check_lookup_name(text: str, param: str = "id") -> str:
    """An adapter id or alias given by a user; anything else (paths, NUL...) is refused."""
    if parse_adapter_id(text) is None and not NAME_PATTERN.match(text):
        raise InvalidAdapterNameError(
            "Not a valid adapter id or alias.", param=param, code="invalid_name"
        )
    return text


def new_unique_part(prefix: str = "imp") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def make_adapter_id(
    base: str,
    suffix: str,
    unique: str,
    owner: str = DEFAULT_OWNER,
    checkpoint_step: int | None = None,
) -> AdapterId:
    suffix = check_name(suffix, "suffix") if suffix else ""
    adapter_id = AdapterId(base, check_name(owner, "owner"), suffix, unique, checkpoint_step)
    if parse_adapter_id(str(adapter_id)) is None:
        raise InvalidAdapterNameError(f"'{base}' cannot be part of an adapter id.", param="base")
    return adapter_id
