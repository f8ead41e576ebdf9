"""The flame graph drawn from a cProfile profile (tests.bench.flame)."""

from __future__ import annotations

import cProfile
import re

from tests.bench.flame import render


def leaf() -> int:
    return sum(range(20_000))


def inner() -> int:
    return leaf()


def wrapper(then) -> int:  # used at two levels, as Starlette's exception wrapper is
    return then()


def outer() -> int:
    return wrapper(lambda: wrapper(inner))


def test_a_wrapper_used_at_two_levels_is_drawn_through_to_what_it_wraps(tmp_path):
    profile = tmp_path / "run.prof"
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(200):
        outer()
    profiler.disable()
    profiler.dump_stats(profile)

    svg = render(profile, "a <test>", min_share=0.01)

    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "a &lt;test&gt;" in svg  # the title, escaped
    tips = re.findall(r"<title>([^<]*)</title>", svg)
    names = [tip.split(" (")[0] for tip in tips]
    # Down to the leaf, although the wrapper's merged callees lead back to itself; no
    # function drawn more than twice (the cycle is not followed round).
    assert {"outer", "wrapper", "inner", "leaf"} <= set(names)
    assert max(names.count(name) for name in set(names)) <= 2
    (leaf_tip,) = [tip for tip in tips if tip.startswith("leaf ")]
    assert float(re.search(r"(\d+\.\d)%", leaf_tip).group(1)) > 50  # most of the time
