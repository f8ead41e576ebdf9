"""A flame graph (SVG) drawn from a cProfile profile.

cProfile keeps, for each function, the time spent in it per caller, not whole stacks.
So the graph is laid out from the roots down the way flameprof and gprof2dot do it:
a function's box is split among its callees in proportion to the time each spent
when called from it. Where one function is called from several places, its callees
are shared out in the same proportion in each place; that is an estimate, exact
where a function has one caller, as most on the request path have. A box narrower
than ``min_share`` of the whole is left out, with what it calls.

    python -m tests.bench.flame PROFILE OUT.svg [--title TEXT]
"""

from __future__ import annotations

import argparse
import hashlib
import html
import pstats
import sys
from dataclasses import dataclass
from pathlib import Path

Func = tuple[str, int, str]  # (file, line, name), as pstats keys them

_WIDTH, _ROW, _FONT = 1400, 17, 11
_MAX_DEPTH = 80


@dataclass(frozen=True)
class _Box:
    func: Func
    x: float  # seconds from the left edge
    seconds: float
    depth: int


def _callees(stats: dict) -> dict[Func, dict[Func, float]]:
    """caller -> {callee: cumulative seconds of the callee when called from it}"""
    edges: dict[Func, dict[Func, float]] = {}
    for func, (_, _, _, _, callers) in stats.items():
        for caller, (_, _, _, cumulative) in callers.items():
            edges.setdefault(caller, {})[func] = cumulative
    return edges


def _layout(stats: dict, min_share: float) -> tuple[list[_Box], float]:
    edges = _callees(stats)
    roots = {f: row[3] for f, row in stats.items() if not row[4]}
    total = sum(roots.values()) or 1.0
    boxes: list[_Box] = []

    def place(func: Func, x: float, seconds: float, depth: int, path: tuple[Func, ...]) -> None:
        if seconds < total * min_share or depth > _MAX_DEPTH:
            return
        boxes.append(_Box(func, x, seconds, depth))
        split(func, x, seconds, depth + 1, path)

    def split(
        func: Func,
        x: float,
        seconds: float,
        depth: int,
        path: tuple[Func, ...],
        through: bool = False,
    ) -> None:
        """func's box shared out among its callees, one row up."""
        callees = edges.get(func, {})
        if through:  # only what it calls that is not on the path yet, sharing all its width
            callees = {c: t for c, t in callees.items() if c not in path}
            scale = seconds / (sum(callees.values()) or 1.0)
        else:
            scale = seconds / (stats[func][3] or 1.0)  # this box's share of all of func's time
        end = x + seconds
        for callee, cumulative in sorted(callees.items(), key=lambda e: -e[1]):
            width = min(cumulative * scale, end - x)  # never wider than what is left
            if callee not in path:
                place(callee, x, width, depth, (*path, callee))
            elif path.count(callee) < 2:
                # Met again on the way down: a wrapper used at two levels (Starlette's
                # exception wrapper is), whose merged callees lead back to where it was
                # first met, or recursion. Drawn through: what it calls that is not on
                # the path yet takes its place.
                split(callee, x, width, depth, (*path, callee), through=True)
            x += width

    x = 0.0
    for root, seconds in sorted(roots.items(), key=lambda r: -r[1]):
        place(root, x, seconds, 0, (root,))
        x += seconds
    return boxes, total


def _label(func: Func) -> str:
    file, line, name = func
    if file == "~":  # a built-in
        return name
    return f"{name} ({Path(file).name}:{line})"


def _colour(func: Func) -> str:
    digest = hashlib.sha1(func[0].encode()).digest()
    return f"rgb({205 + digest[0] % 50},{90 + digest[1] % 130},{digest[2] % 60})"


def render(profile: Path, title: str, min_share: float = 0.002) -> str:
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    boxes, total = _layout(stats, min_share)
    depth = max((b.depth for b in boxes), default=0) + 1
    height = (depth + 2) * _ROW
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{_FONT}">',
        f'<text x="4" y="{_ROW - 4}">{html.escape(title)} ({total:.2f} s of CPU; '
        "hover a box for its name and share)</text>",
    ]
    per_second = _WIDTH / total
    for box in boxes:
        x, width = box.x * per_second, box.seconds * per_second
        y = height - (box.depth + 1) * _ROW
        label = _label(box.func)
        tip = f"{label}: {box.seconds:.3f} s, {box.seconds / total:.1%}"
        fits = int(width / (_FONT * 0.6)) - 1
        text = label if len(label) <= fits else label[: max(fits - 1, 0)] + "…"
        caption = f'<text x="{x + 2:.1f}" y="{y + _ROW - 5}">{html.escape(text)}</text>'
        out.append(
            f'<g><title>{html.escape(tip)}</title><rect x="{x:.1f}" y="{y}" '
            f'width="{max(width - 0.5, 0.1):.1f}" height="{_ROW - 1}" fill="{_colour(box.func)}"/>'
            + (caption if fits > 2 else "")
            + "</g>"
        )
    out.append("</svg>")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.flame")
    parser.add_argument("profile", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    args.out.write_text(render(args.profile, args.title or args.profile.name), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
