"""The ``tunegate`` command line.

    tunegate serve [--port 8000 ...]      run a gateway (flags: every setting)
    tunegate models                       list the models a gateway serves
    tunegate chat MODEL [PROMPT]          one-shot or interactive chat, streamed

It talks to ``$TUNEGATE_URL`` (default http://127.0.0.1:8000/v1) with
``$TUNEGATE_API_KEY`` through the official ``openai`` SDK. Errors are one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

DEFAULT_URL = "http://127.0.0.1:8000/v1"


def _client():  # the SDK import is deferred: `tunegate serve` does not need it
    from openai import OpenAI

    return OpenAI(
        base_url=os.environ.get("TUNEGATE_URL", DEFAULT_URL),
        api_key=os.environ.get("TUNEGATE_API_KEY", "local"),
        max_retries=0,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.settings_cli import settings_from_args

    serve(settings_from_args(args))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for model in _client().models.list():
        extra = model.model_extra or {}
        print(f"{model.id}\t{extra.get('engine', '?')}\t{extra.get('kind', '?')}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    client = _client()
    history: list[dict[str, str]] = []

    def ask(prompt: str) -> None:
        history.append({"role": "user", "content": prompt})
        stream = client.chat.completions.create(
            model=args.model, messages=history, stream=True, max_tokens=args.max_tokens
        )
        answer = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                answer.append(chunk.choices[0].delta.content)
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(answer)})

    if args.prompt:
        ask(" ".join(args.prompt))
        return 0
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            return 0
        if prompt.strip():
            ask(prompt)


def build_parser() -> argparse.ArgumentParser:
    from gateway.settings_cli import add_settings_flags

    parser = argparse.ArgumentParser(
        prog="tunegate", description="tunegate: local OpenAI-compatible gateway"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a gateway")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)
    models = sub.add_parser("models", help="list the models a gateway serves")
    models.set_defaults(func=cmd_models)
    chat = sub.add_parser("chat", help="chat with a model (streamed)")
    chat.add_argument("model")
    chat.add_argument("prompt", nargs="*", help="one-shot prompt; interactive when omitted")
    chat.add_argument("--max-tokens", type=int, default=512)
    chat.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, never a traceback
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        print(f"tunegate: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
