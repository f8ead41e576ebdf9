"""``POST /v1/responses`` on every engine, chosen by a table of engine families.

vLLM serves the Responses API itself, exactly: the request is forwarded as a
chat request is (adapters chosen by ``model``). llama.cpp's servers do not
serve it exactly: llama-cpp-python's server has no such route, and
``llama-server`` (in the llama.cpp that llama-cpp-python 0.3.36 vendors)
answers events without ``sequence_number``, ``output_index`` or
``content_index`` and a ``response`` object without the request's settings.
For them the gateway asks the engine's chat completions route and translates
the answer. Either way the request goes through ``Forwarder.forward``, so
admission, metrics and errors are the ones every inference request gets.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from pydantic import ValidationError

from gateway.catalog import ModelCatalog, ModelEntry
from gateway.error_handlers import describe_validation_errors
from gateway.errors import InvalidRequestError, TunegateError
from gateway.forwarding import EngineReply, Forwarder
from gateway.protocol import ChatCompletionRequest
from gateway.responses.from_chat import response_from_chat
from gateway.responses.objects import new_id, response_object
from gateway.responses.protocol import ResponsesRequest
from gateway.responses.sse import data_payloads, event_bytes
from gateway.responses.stream import ChatStreamTranslator
from gateway.responses.to_chat import CHAT_TO_RESPONSES_PARAMS, chat_body

log = logging.getLogger(__name__)

ResponsesHandler = Callable[
    [Forwarder, ModelEntry, ResponsesRequest, bytes], Awaitable[EngineReply]
]


async def create_response(
    catalog: ModelCatalog, forwarder: Forwarder, request: ResponsesRequest, raw_body: bytes
) -> EngineReply:
    request.refuse_stateful()
    entry = catalog.resolve(request.model)
    handler = RESPONSES_BY_ENGINE_FAMILY.get(entry.engine, through_chat_completions)
    return await handler(forwarder, entry, request, raw_body)


async def pass_through(
    forwarder: Forwarder, entry: ModelEntry, request: ResponsesRequest, raw_body: bytes
) -> EngineReply:
    """The engine's own ``/v1/responses``, told not to store the response either."""
    return await forwarder.forward("/v1/responses", request, _not_stored(request, raw_body))


async def through_chat_completions(
    forwarder: Forwarder, entry: ModelEntry, request: ResponsesRequest, raw_body: bytes
) -> EngineReply:
    """The engine's chat completions route, its answer translated back."""
    body = chat_body(request, entry.engine)
    try:
        chat_request = ChatCompletionRequest.model_validate(body)
        reply = await forwarder.forward(
            "/v1/chat/completions", chat_request, json.dumps(body).encode()
        )
    except ValidationError as exc:  # an engine extra of the wrong type for chat
        message, param, code = describe_validation_errors(exc.errors())
        raise InvalidRequestError(message, param=param, code=code) from None
    except TunegateError as error:
        raise _in_responses_terms(error) from None
    response_id = new_id("resp")
    if reply.chunks is None:
        try:
            chat = json.loads(reply.body)
        except ValueError:
            raise TunegateError("The engine's answer was not JSON.") from None
        response = response_from_chat(request, chat, response_id, entry.id)
        return EngineReply(reply.status, "application/json", body=json.dumps(response).encode())
    translator = ChatStreamTranslator(
        response_object(request, response_id, int(time.time()), entry.id)
    )
    return EngineReply(
        reply.status,
        "text/event-stream",
        chunks=_events(translator, reply.chunks),
        abandon=reply.abandon,
    )


# Engine family -> how it answers the Responses API. Families not listed (any
# OpenAI-compatible server) are translated: chat completions is what they all have.
RESPONSES_BY_ENGINE_FAMILY: dict[str, ResponsesHandler] = {
    "vllm": pass_through,
    "llama.cpp": through_chat_completions,
}


def _not_stored(request: ResponsesRequest, raw_body: bytes) -> bytes:
    """vLLM stores responses in memory when started with VLLM_ENABLE_RESPONSES_API_STORE
    (an external vLLM may be); the gateway keeps every engine stateless alike."""
    if request.store is False:
        return raw_body
    payload = json.loads(raw_body)
    payload["store"] = False
    return json.dumps(payload).encode()


async def _events(
    translator: ChatStreamTranslator, chunks: AsyncIterator[bytes]
) -> AsyncIterator[bytes]:
    try:
        for event in translator.start():
            yield event_bytes(event)
        async for data in data_payloads(chunks):
            if data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                log.warning("skipping an engine stream event that is not JSON: %.200s", data)
                continue
            if isinstance(chunk, dict) and "error" in chunk:
                # The engine stopped mid-answer: the same error event as on every
                # engine, which the openai SDK raises as APIError.
                yield b"data: " + data.encode() + b"\n\n"
                return
            for event in translator.feed(chunk):
                yield event_bytes(event)
        for event in translator.finish():
            yield event_bytes(event)
    finally:
        # Closing the relay ends the generation at the engine and frees the
        # request's admission slot, also when the client went away first.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def _in_responses_terms(error: TunegateError) -> TunegateError:
    """An error about the chat request, named as the client named it."""
    for chat_name, responses_name in CHAT_TO_RESPONSES_PARAMS.items():
        # Positions inside ``messages`` are not positions in ``input`` (instructions
        # come first, parallel calls share a turn), so only the parameter is named.
        if error.param is not None and error.param.split(".")[0] == chat_name:
            error.param = responses_name
        error.message = error.message.replace(f"'{chat_name}'", f"'{responses_name}'")
    return error
