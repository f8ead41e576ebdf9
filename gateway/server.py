"""Runs one gateway with uvicorn: ``python -m gateway`` or ``tunegate serve``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from gateway.settings_cli import add_settings_flags, settings_from_args


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown, so the process would
    report death by signal; a drained, cleanly stopped gateway exits 0 instead."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and sig in captured:
            captured.remove(sig)


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per engine request would drown the gateway's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=30,
    )
    _GracefulServer(config).run()


def build_parser(prog: str = "python -m gateway") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run the tunegate gateway.")
    add_settings_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    serve(settings_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
