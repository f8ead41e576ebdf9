"""``make bench``: every benchmark, one table, one JSON file.

python -m tests.bench [--suite overhead|hotpath|engines|...|fleet|training|dpo|all]
                      [--quick] [--out FILE] [--before TREE (hotpath: an earlier checkout)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.bench.dpo import dpo
from tests.bench.fleet import fleet
from tests.bench.gguf_bases import gguf_bases
from tests.bench.hotpath import hotpath
from tests.bench.llamacpp_adapters import llamacpp_adapters
from tests.bench.llamacpp_server import llamacpp_server
from tests.bench.lora_size import lora_size
from tests.bench.suites import Row, adapters, gateway_overhead, real_engines, tuner
from tests.bench.tool_calls import tool_calls
from tests.bench.training import training
from tests.bench.trial import trial


def render(rows: list[Row]) -> str:
    columns = f"{'suite':<21} {'metric':<27} {'baseline':>10} {'measured':>10} {'ratio':>7}"
    header = f"{columns}  {'goal':<28} met"
    lines = [header, "-" * len(header)]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            f"{row.suite:<21} {row.metric:<27} {row.direct:>10.2f} {row.gateway:>10.2f} "
            f"{row.ratio:>6.3f}×  {row.goal:<28} {met}"
        )
    return "\n".join(lines)


def markdown(rows: list[Row], machine: str, command: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {machine}.",
        "Every figure is measured side by side in the same run: *baseline* is direct to the",
        "engine (or the first thing the metric names), *measured* the other. The machine's",
        "2 cores are shared by the load, the gateway and the engine.",
        "",
        "| suite | metric | baseline | measured | ratio | unit | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.suite} | {row.metric} | {row.direct:.2f} | {row.gateway:.2f} | "
            f"{row.ratio:.3f}× | {row.unit} | {row.goal} | {met} |"
        )
    return "\n".join(lines) + "\n"


Suite = Callable[[bool, Path | None], Awaitable[list[Row]]]

# Every suite, in the order `all` runs them: name -> (quick, before) -> its rows.
SUITES: dict[str, Suite] = {
    "overhead": lambda quick, _: gateway_overhead(
        rounds=200 if quick else 1000, duration_s=2 if quick else 6
    ),
    "hotpath": hotpath,
    "engines": lambda quick, _: real_engines(rounds=10 if quick else 30),
    "adapters": lambda quick, _: adapters(rounds=9 if quick else 18, duration_s=8 if quick else 20),
    "tuner": lambda quick, _: tuner(quick),
    "dpo": lambda quick, _: dpo(quick),
    "llamacpp": lambda quick, _: llamacpp_server(quick),
    "llamacpp-adapters": lambda quick, _: llamacpp_adapters(quick),
    "fleet": lambda quick, _: fleet(quick),
    "training": lambda quick, _: training(quick),
    "trial": lambda quick, _: trial(quick),
    "tool-calls": lambda quick, _: tool_calls(quick),
    "gguf-bases": lambda quick, _: gguf_bases(quick),
    "lora-size": lambda quick, _: lora_size(quick),
}


async def run(suite: str, quick: bool, before: Path | None = None) -> list[Row]:
    rows: list[Row] = []
    for name, measure in SUITES.items():
        if suite in (name, "all"):
            rows += await measure(quick, before)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument(
        "--suite",
        choices=(*SUITES, "all"),
        default="all",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--out", type=Path, default=Path("var/bench/results.json"))
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument(
        "--before", type=Path, help="hotpath: also measure the gateway of this earlier checkout"
    )
    args = parser.parse_args()
    started = time.time()
    try:
        import uvloop

        rows = uvloop.run(run(args.suite, args.quick, args.before))
    except ImportError:
        rows = asyncio.run(run(args.suite, args.quick, args.before))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\ntunegate benchmarks ({machine}), measured side by side in this run.")
    print(
        "baseline: direct to the engine, or the first thing a metric names; measured: the other.\n"
    )
    print(render(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine,
                "command": " ".join(["python -m tests.bench", *sys.argv[1:]]),
                "started": started,
                "rows": [r.as_dict() for r in rows],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.out}")
    if args.markdown:
        command = " ".join(["python -m tests.bench", *sys.argv[1:]])
        args.markdown.write_text(markdown(rows, machine, command))
        print(f"and to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
