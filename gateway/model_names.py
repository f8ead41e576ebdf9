"""OpenAI model names (``gpt-4o-mini-2024-07-18``, ``gpt-4.1-mini``…) mapped to local models.

Code written against OpenAI names an OpenAI model in every job, chat and test. The
``openai_models`` setting maps such names to models served here; unset, and while the
embedded model is served, OpenAI's fine-tunable models map to the embedded base, so that
such code runs unchanged with no settings at all. A user's map replaces that default.

The catalog consults this map only after an id and an alias missed, so resolving a
local id costs what it did; a mapped name costs one more dictionary lookup, and the
forwarder then sends the engine the local id (it rewrites ``model`` as for an alias).
An OpenAI-looking name that is not mapped gets a 404 that names the setting and lists
the local bases, rather than the plain "does not exist".
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from gateway.errors import ModelNotFoundError
from gateway.settings import EMBEDDED_MODEL_ID, Settings

if TYPE_CHECKING:
    from gateway.catalog import ModelCatalog

# OpenAI's models that its fine-tuning API takes (dated and undated names), which code
# that moves here names.
OPENAI_FINE_TUNABLE = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-mini",
    "gpt-4o-2024-08-06",
    "gpt-4o",
    "gpt-4.1-2025-04-14",
    "gpt-4.1",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-mini",
    "gpt-4.1-nano-2025-04-14",
    "gpt-4.1-nano",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-0613",
)

# Names that only OpenAI's models have: an unmapped one gets the message about the setting.
_OPENAI_LOOKING = re.compile(r"^(gpt-|chatgpt-|o[134](-|$)|davinci|babbage|ft:gpt-)")

SETTING = "openai_models"


def openai_models_of(settings: Settings) -> dict[str, str]:
    """The map in force: the user's, else the default (empty without the embedded model)."""
    if settings.openai_models is not None:
        return dict(settings.openai_models)
    if not settings.embedded_model:
        return {}
    return dict.fromkeys(OPENAI_FINE_TUNABLE, EMBEDDED_MODEL_ID)


def looks_like_openai(name: str) -> bool:
    return bool(_OPENAI_LOOKING.match(name))


class OpenAINames:
    """OpenAI name -> local model id (a base, an adapter, any id the catalog serves)."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self._names = dict(names or {})

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAINames:
        return cls(openai_models_of(settings))

    def get(self, name: str) -> str | None:
        return self._names.get(name)

    def local_name(self, name: str) -> str:
        """The local id for ``name``; any other name comes back as it is."""
        return self._names.get(name, name)

    def to_local(self, name: str, local_bases: list[str]) -> str:
        """A job's ``model`` as a local id (a local base's own name wins); an
        OpenAI-looking name that is not mapped is refused with the message that names
        the setting."""
        if name in local_bases:  # a local base may have any name, an OpenAI-like one too
            return name
        local = self._names.get(name)
        if local is not None:
            return local
        if looks_like_openai(name):
            raise self.not_found(name, local_bases)
        return name

    def not_found(self, name: str, local_bases: list[str]) -> ModelNotFoundError:
        """The 404 for a name that nothing serves: for an OpenAI name, how to map it."""
        shown = name[:200]
        target = self._names.get(name)
        if target is not None:
            return ModelNotFoundError(
                shown,
                f"The model '{shown}' maps to '{target}' (setting {SETTING}), "
                f"which is not served here. Local base models: {_listed(local_bases)}.",
            )
        if not looks_like_openai(name):
            return ModelNotFoundError(shown)
        example = json.dumps({shown: local_bases[0] if local_bases else "<local base>"})
        return ModelNotFoundError(
            shown,
            f"The model '{shown}' is an OpenAI model name that is not mapped to a model "
            f"served here. Map it with the {SETTING} setting, for example "
            f"TUNEGATE_OPENAI_MODELS='{example}'. Local base models: {_listed(local_bases)}.",
        )

    def listed(self, catalog: ModelCatalog) -> list[dict[str, Any]]:
        """``/v1/models`` objects of the mapped names whose local model is served."""
        return [
            described
            for name in self._names
            if (described := self.described(name, catalog)) is not None
        ]

    def described(self, name: str, catalog: ModelCatalog) -> dict[str, Any] | None:
        """The model object of a mapped name (``parent``/``root`` name the local model),
        or None when ``name`` is not a mapped name, or is a local id itself."""
        target = self._names.get(name)
        if target is None or name in catalog:
            return None
        try:
            entry = catalog.resolve(target)
        except ModelNotFoundError:
            return None
        return {
            "id": name,
            "object": "model",
            "created": entry.created,
            "owned_by": entry.owned_by,
            "root": entry.root or entry.id,
            "parent": entry.id,
            "engine": entry.engine,
            "kind": "openai_name",
        }

    def __len__(self) -> int:
        return len(self._names)


def _listed(ids: list[str]) -> str:
    return ", ".join(ids) or "none"
