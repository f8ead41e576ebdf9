"""Request types of the fine-tuning routes, as OpenAI spells them, plus documented extras.

``method`` is OpenAI's: ``{"type": "supervised" | "dpo", "<type>": {"hyperparameters":
{...}}}``; ``"reinforcement"`` parses, and the service refuses it with a message.

Extras in ``hyperparameters`` (also under ``method.<type>.hyperparameters``):
``lora_rank``, ``lora_alpha`` and ``lora_target_modules`` (a list of module
names, or "all-linear"), and for DPO ``sft_loss_weight`` (the weight of the
supervised term on the preferred answers; 0 is plain DPO), each a value or "auto".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.finetune.job_fields import (
    check_integrations,
    check_metadata,
    check_seed,
    check_suffix,
)

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


class DpoHyperparameters(Hyperparameters):
    beta: Literal["auto"] | Annotated[float, Field(gt=0, le=10)] = "auto"
    sft_loss_weight: Literal["auto"] | Annotated[float, Field(ge=0, le=10)] = "auto"


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


# Method type -> the hyperparameters it takes.
HYPERPARAMETER_TYPES: dict[str, type[Hyperparameters]] = {
    "supervised": Hyperparameters,
    "dpo": DpoHyperparameters,
}


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: Annotated[str, Field(min_length=1, max_length=128)]
    validation_file: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    suffix: Annotated[str, Field(max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: dict[str, str] | None = None  # OpenAI's limits: job_fields
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None
    # Extra: also merge the adapter and export a GGUF for llama.cpp when training ends,
    # e.g. ["gguf"] (q8_0) or ["gguf:f16", "gguf:q4_k_m"].
    export: list[str] | None = None

    # Checked before pydantic's own checks, so that a refusal has OpenAI's wording and code.
    @field_validator("metadata", mode="before")
    @classmethod
    def openai_metadata(cls, value: Any) -> dict[str, str] | None:
        return check_metadata(value)

    @field_validator("seed", mode="before")
    @classmethod
    def openai_seed(cls, value: Any) -> int | None:
        return check_seed(value)

    @field_validator("suffix", mode="before")
    @classmethod
    def openai_suffix(cls, value: Any) -> str | None:
        return check_suffix(value)

    @field_validator("integrations", mode="before")
    @classmethod
    def openai_integrations(cls, value: Any) -> list[dict[str, Any]] | None:
        return check_integrations(value)

    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def chosen_hyperparameters(self) -> Hyperparameters:
        """The method block's hyperparameters, else the top-level (older) ones, else all "auto"."""
        kind = HYPERPARAMETER_TYPES[self.method_type()]
        block = getattr(self.method, self.method_type(), None) if self.method else None
        if block is not None and block.hyperparameters is not None:
            return block.hyperparameters
        return kind.model_validate((self.hyperparameters or Hyperparameters()).model_dump())
