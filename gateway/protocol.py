"""Request types of the OpenAI inference routes, as OpenAI spells them.

The gateway validates what it must know to route and to protect engines
(model, messages, bounds of common sampling parameters) and lets every other
field through untouched: unknown fields are accepted, logged, and forwarded,
so engine-specific extras (vLLM's ``top_k``, ``guided_json``...) keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function"]


class RoutedRequest(BaseModel):
    """What the gateway needs of any request it forwards: the model, and whether it streams."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1, max_length=512)]
    stream: bool | None = False

    def unknown_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())


class OpenAIRequest(RoutedRequest):
    """The sampling fields that chat completions and completions share."""

    n: Annotated[int, Field(ge=1, le=16)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    stream_options: dict[str, Any] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: ChatRole
    # Text, or a list of content parts; None is valid for assistant tool calls.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None
