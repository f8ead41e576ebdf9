"""Runs one gateway with uvicorn: ``python -m gateway`` or ``tunegate serve``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn

from gateway.app import create_app
from gateway.middleware import DrainState
from gateway.security import check_exposure
from gateway.settings import Settings
from gateway.settings_cli import add_settings_flags, settings_from_args


class _GracefulServer(uvicorn.Server):
    """SIGTERM drains before uvicorn stops: /ready turns 503 and new requests get
    503 while the gateway keeps listening, until the requests in progress finish
    (or ``drain_timeout_s`` passes); then uvicorn shuts down as usual, the
    engines and the trainer are stopped, and the process exits 0 (uvicorn would
    re-raise SIGTERM and report death by signal). A second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, drain: DrainState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self._drain.draining and self._loop is not None:
            self._drain.draining = True
            loop = self._loop
            loop.call_soon_threadsafe(lambda: loop.create_task(self._exit_when_drained()))
            return
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and sig in captured:
            captured.remove(sig)

    async def _exit_when_drained(self) -> None:
        deadline = time.monotonic() + self._drain_timeout_s
        while self._drain.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.should_exit = True


def serve(settings: Settings) -> None:
    check_exposure(settings)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per engine request would drown the gateway's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=30,
    )
    _GracefulServer(config, app.state.drain, settings.drain_timeout_s).run()


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
