"""Engines behind a small seam: each turns a model entry into an upstream URL.

Every engine speaks the OpenAI HTTP API; the gateway forwards requests to it
with one shared ``httpx.AsyncClient``. See ``base.py`` for the seam.
"""
