"""The Responses request, as OpenAI spells it, and the state this gateway does not keep.

As with chat, the gateway checks what it must know to route and to protect
engines, and lets every other field through: unknown fields are accepted,
logged and forwarded (vLLM's ``top_k``, ``repetition_penalty``...).

The gateway is stateless for Responses: it stores no response and no
conversation, on any engine. A request that needs stored state is refused
with ``400`` and a message that says why, rather than answered without it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidRequestError
from gateway.protocol import RoutedRequest

_SEND_THE_HISTORY = "send the conversation so far in 'input' instead"

# Parameter -> why it cannot be honoured here. Checked when the value is set (truthy).
STATEFUL_PARAMETERS: dict[str, str] = {
    "previous_response_id": (
        f"Responses are not stored on this gateway, so 'previous_response_id' "
        f"cannot refer to one; {_SEND_THE_HISTORY}."
    ),
    "conversation": f"Conversations are not stored on this gateway; {_SEND_THE_HISTORY}.",
    "background": (
        "Responses are not stored on this gateway, so background mode, which needs "
        "them, is off; leave 'background' unset and use 'stream' for long answers."
    ),
    "prompt": (
        "Stored prompt templates are not kept on this gateway; "
        "send 'instructions' and 'input' instead."
    ),
}

NOT_STORED_MESSAGE = (
    "Responses are not stored on this gateway (it is stateless: 'store' is ignored), "
    "so they cannot be retrieved, listed, cancelled or deleted."
)


class ResponsesRequest(RoutedRequest):
    """``POST /v1/responses``. Items in ``input`` are checked where they are translated."""

    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None

    def refuse_stateful(self) -> None:
        """``400`` for a parameter that needs a stored response or conversation."""
        for param, reason in STATEFUL_PARAMETERS.items():
            if getattr(self, param):
                raise InvalidRequestError(reason, param=param, code="unsupported_parameter")


class ResponseDocument(BaseModel):
    """The ``response`` object, as documented in the OpenAPI schema (fields as OpenAI's)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"]
    created_at: float
    status: str | None = None
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
