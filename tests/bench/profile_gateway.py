"""Where a gateway's CPU goes on the chat path, under load: non-streamed, or streamed.

Runs ``python -m gateway`` (from ``--tree``, this checkout by default) under cProfile
in front of the instant fake upstream, sends ``--requests`` chat requests from
``--concurrency`` clients (the lean client: the load costs the shared cores little),
stops the gateway with SIGTERM (it drains and exits 0, so the profile is written) and
prints the functions by own time and by cumulative time; ``--flame`` draws them as a flame
graph (``tests.bench.flame``: py-spy cannot read this machine's Python processes, "Failed
to find python version").
With ``--stream`` each request is a stream of ``LONG_STREAM`` chunks, each sent on its
own by the upstream (as an engine sends tokens): the table is then mostly per chunk.

    python -m tests.bench.profile_gateway [--tree DIR] [--requests 5000] [--stream] [--save F]
        [--flame F.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from gateway.engines.process import free_port
from gateway.stream_client import UpstreamClient
from tests.bench.flame import render as render_flame
from tests.bench.hotpath import (
    CHAT_PATH,
    LONG_STREAM,
    _body,
    _plain,
    _process,
    _streamed,
    closed_loop,
    upstream,
)
from tests.support.gateway_process import REPO, link_prepared_checkpoint

# cProfile with the process's CPU clock: on a shared machine a wall clock charges the time
# the gateway waited for a core to whatever function it was in. It profiles from SIGUSR1 to
# SIGUSR2 (sent around the load), so start-up and shutdown are not in the profile.
_UNDER_CPROFILE = """
import cProfile, runpy, signal, sys, time
out = sys.argv.pop(1)
sys.argv = sys.argv[2:]  # past "-m gateway"
profiler = cProfile.Profile(time.process_time)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
signal.signal(signal.SIGUSR2, lambda *_: profiler.disable())
try:
    runpy.run_module("gateway", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


def _gateway_command(port: int, data_root: str, upstream_url: str) -> list[str]:
    return [
        "-m",
        "gateway",
        "--port",
        str(port),
        "--data-root",
        data_root,
        "--vllm-url",
        upstream_url,
        "--no-llamacpp-enabled",
    ]


async def _load(url: str, requests: int, concurrency: int, stream: bool) -> float:
    client = UpstreamClient(10, 60, max_idle=concurrency)
    body = _body(LONG_STREAM, stream=True) if stream else _body(1)
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < requests:
            done += 1
            if stream:
                await _streamed(url, body)
            else:
                await _plain(client, url, body)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    client.close()
    return time.perf_counter() - started


def profile(
    tree: Path,
    requests: int,
    concurrency: int,
    stream: bool = False,
    save: Path | None = None,
    flame: Path | None = None,
) -> str:
    with ExitStack() as stack:
        instant = stack.enter_context(upstream(0.0, chunk_gap_ms=1.0 if stream else 0.0))
        base = instant.chat_url[: -len(CHAT_PATH)]
        data_root = stack.enter_context(tempfile.TemporaryDirectory(prefix="tunegate-prof-"))
        link_prepared_checkpoint(Path(data_root))
        port = free_port()
        stats_path = Path(data_root) / "gateway.prof"
        prefix = [sys.executable, "-c", _UNDER_CPROFILE, str(stats_path)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        command = prefix + _gateway_command(port, data_root, base)
        server = stack.enter_context(_process("gateway", command, tree, port, env))
        url = f"http://127.0.0.1:{port}{CHAT_PATH}"
        asyncio.run(closed_loop(lambda: _warm(url), 4, 1.0))
        server.process.send_signal(signal.SIGUSR1)
        cpu_before = _cpu(server.process)
        seconds = asyncio.run(_load(url, requests, concurrency, stream))
        cpu = _cpu(server.process) - cpu_before
        server.process.send_signal(signal.SIGUSR2)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(60)
        what = f"streams of {LONG_STREAM} chunks" if stream else "requests"
        summary = (
            f"{requests} {what}, c={concurrency}, {seconds:.2f} s: "
            f"{requests / seconds:.0f} req/s, gateway CPU {cpu / requests * 1e6:.0f} µs/request "
            "(under cProfile)"
        )
        if save is not None:  # for pstats' callers, or a flame graph (tests.bench.flame)
            shutil.copyfile(stats_path, save)
        if flame is not None:
            title = f"gateway ({tree.name}): {what}"
            flame.write_text(render_flame(stats_path, title), encoding="utf-8")
        return summary + "\n" + _table(stats_path, requests)


async def _warm(url: str) -> None:
    client = UpstreamClient(10, 60)
    await _plain(client, url, _body(1))
    client.close()


def _cpu(process) -> float:  # type: ignore[no-untyped-def]
    times = process.cpu_times()
    return times.user + times.system


def _table(stats_path: Path, requests: int, top: int = 45) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=out)
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        out.write(f"\n--- by {key} (seconds for all {requests} requests) ---\n")
        stats.sort_stats(key).print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile_gateway")
    parser.add_argument("--tree", type=Path, default=REPO)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stream", action="store_true", help="streamed answers")
    parser.add_argument("--save", type=Path, help="keep the raw profile (pstats) in this file")
    parser.add_argument("--flame", type=Path, help="draw a flame graph (SVG) into this file")
    args = parser.parse_args()
    tree = args.tree.resolve()
    print(profile(tree, args.requests, args.concurrency, args.stream, args.save, args.flame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
