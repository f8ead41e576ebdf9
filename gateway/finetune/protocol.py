"""Request types of the fine-tuning routes, as OpenAI spells them, plus documented extras.

Extras in ``hyperparameters`` (also under ``method.supervised.hyperparameters``):
``lora_rank``, ``lora_alpha`` and ``lora_target_modules`` (a list of module
names, or "all-linear"), each a value or "auto".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AutoInt = Literal["auto"] | Annotated[int, Field(ge=1)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=10)] = "auto"
    lora_rank: Literal["auto"] | Annotated[int, Field(ge=1, le=256)] = "auto"
    lora_alpha: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"
    lora_target_modules: (
        Literal["auto", "all-linear"] | Annotated[list[str], Field(min_length=1)]
    ) = "auto"

    def requested(self) -> dict[str, Any]:
        return self.model_dump()


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: Annotated[str, Field(min_length=1, max_length=128)]
    validation_file: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    suffix: Annotated[str, Field(max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None
    # Extra: also merge the adapter and export a GGUF for llama.cpp when training ends,
    # e.g. ["gguf"] (q8_0) or ["gguf:f16", "gguf:q4_k_m"].
    export: list[str] | None = None

    def chosen_hyperparameters(self) -> Hyperparameters:
        if self.method and self.method.supervised and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()
