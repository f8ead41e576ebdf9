"""tunegate's HTTP gateway: OpenAI-compatible routes in front of vLLM and llama.cpp engines."""

from gateway.app import create_app
from gateway.settings import Settings

__all__ = ["Settings", "create_app"]
