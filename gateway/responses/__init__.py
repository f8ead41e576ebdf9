"""OpenAI's Responses API (``POST /v1/responses``) on every served model.

protocol.py   the request type, and what a stateless gateway refuses
to_chat.py    a Responses request as a chat completions request
from_chat.py  a chat completion (whole or streamed) as a Response and its events
sse.py        reading and writing server-sent events
service.py    per engine family: pass the request through, or translate it
"""
