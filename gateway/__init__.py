"""tunegate's HTTP gateway: OpenAI-compatible routes in front of vLLM and llama.cpp engines.

The package itself imports nothing: engine processes load ``gateway.parent_death``
at start and must not pay for the web stack. The app is ``gateway.app.create_app``.
"""
