"""Streamed chat completion chunks as the Responses API's stream of events.

The stream opens with ``response.created`` and ``response.in_progress``.
Each output item (reasoning, message, function call) is announced with
``response.output_item.added`` (and ``response.content_part.added`` for text),
grows by ``*.delta`` events and ends with the matching ``*.done`` events and
``response.output_item.done``. The stream closes with ``response.completed``,
or ``response.incomplete`` when the answer hit its token limit. Every event
carries a ``sequence_number``, from 0, one more each time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.responses.objects import (
    finish_status,
    finished,
    function_call_item,
    message_item,
    new_id,
    output_text,
    reasoning_item,
    reasoning_of,
    reasoning_text,
    usage_from_chat,
)

Event = dict[str, Any]


@dataclass
class _Item:
    kind: str  # "message", "reasoning" or "function_call"
    id: str
    output_index: int
    text: str = ""  # the message or reasoning text, or the call's arguments
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    final: dict[str, Any] | None = None  # the finished item, once closed


_ID_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc"}


class ChatStreamTranslator:
    """Chat completion chunks in; Responses events out, numbered in order."""

    def __init__(self, response: dict[str, Any]) -> None:
        self._response = response  # as ``objects.response_object`` builds it
        self._sequence = 0
        self._items: list[_Item] = []
        self._open_text: _Item | None = None  # the message or reasoning item growing now
        self._calls: dict[int, _Item] = {}  # chat's tool call index -> its item
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=dict(self._response)),
            self._event("response.in_progress", response=dict(self._response)),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage_from_chat(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = reasoning_of(delta)
            if reasoning:
                events += self._text("reasoning", reasoning, None)
            if isinstance(delta.get("content"), str) and delta["content"]:
                logprobs = (choice.get("logprobs") or {}).get("content")
                events += self._text("message", delta["content"], logprobs)
            for call in delta.get("tool_calls") or []:
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if not self._items:  # an empty answer is still one message
            events += self._open_item("message")
        status = "incomplete" if finish_status(self._finish_reason)[0] == "incomplete" else None
        if self._open_text is not None:
            events += self._close(self._open_text, status or "completed")
        for call in self._calls.values():
            if call.final is None:
                events += self._close(call, status or "completed")
        output = [item.final for item in self._items if item.final is not None]
        response = finished(self._response, output, self._finish_reason, self._usage)
        events.append(self._event(f"response.{response['status']}", response=response))
        return events

    def _text(self, kind: str, delta: str, logprobs: list[dict[str, Any]] | None) -> list[Event]:
        events: list[Event] = []
        item = self._open_text
        if item is None or item.kind != kind:
            if item is not None:
                events += self._close(item, "completed")
            events += self._open_item(kind)
            item = self._open_text
            assert item is not None
        item.text += delta
        where = {"item_id": item.id, "output_index": item.output_index, "content_index": 0}
        if kind == "message":
            item.logprobs += logprobs or []
            events.append(
                self._event(
                    "response.output_text.delta", **where, delta=delta, logprobs=logprobs or []
                )
            )
        else:
            events.append(self._event("response.reasoning_text.delta", **where, delta=delta))
        return events

    def _open_item(self, kind: str) -> list[Event]:
        item = self._new_item(kind)
        self._open_text = item
        if kind == "message":
            added, part = message_item(item.id, "in_progress"), output_text("")
        else:
            added, part = reasoning_item(item.id, "in_progress"), reasoning_text("")
        return [
            self._event("response.output_item.added", output_index=item.output_index, item=added),
            self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.output_index,
                content_index=0,
                part=part,
            ),
        ]

    def _call_delta(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        function = call.get("function") or {}
        item = self._calls.get(call.get("index", 0))
        if item is None:
            if self._open_text is not None:  # text before a tool call is finished
                events += self._close(self._open_text, "completed")
            item = self._new_item("function_call")
            item.call_id = call.get("id") or new_id("call")
            item.name = function.get("name") or ""
            self._calls[call.get("index", 0)] = item
            added = function_call_item(item.id, "in_progress", item.call_id, item.name, "")
            events.append(
                self._event(
                    "response.output_item.added", output_index=item.output_index, item=added
                )
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.text += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.output_index,
                    delta=arguments,
                )
            )
        return events

    def _close(self, item: _Item, status: str) -> list[Event]:
        if item is self._open_text:
            self._open_text = None
        where = {"item_id": item.id, "output_index": item.output_index}
        events: list[Event]
        if item.kind == "function_call":
            item.final = function_call_item(item.id, status, item.call_id, item.name, item.text)
            events = [
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item.name,
                    arguments=item.text,
                )
            ]
        elif item.kind == "message":
            part = output_text(item.text, item.logprobs)
            item.final = message_item(item.id, status, [part])
            events = [
                self._event(
                    "response.output_text.done",
                    **where,
                    content_index=0,
                    text=item.text,
                    logprobs=item.logprobs,
                ),
                self._event("response.content_part.done", **where, content_index=0, part=part),
            ]
        else:
            item.final = reasoning_item(item.id, status, item.text)
            events = [
                self._event(
                    "response.reasoning_text.done", **where, content_index=0, text=item.text
                ),
                self._event(
                    "response.content_part.done",
                    **where,
                    content_index=0,
                    part=reasoning_text(item.text),
                ),
            ]
        events.append(
            self._event(
                "response.output_item.done", output_index=item.output_index, item=item.final
            )
        )
        return events

    @staticmethod
    def _at(item: _Item) -> dict[str, int]:
        return {"output_index": item.output_index}

    def _new_item(self, kind: str) -> _Item:
        item = _Item(kind, new_id(_ID_PREFIXES[kind]), len(self._items))
        self._items.append(item)
        return item

    def _event(self, event_type: str, **fields: Any) -> Event:
        event = {"type": event_type, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event
