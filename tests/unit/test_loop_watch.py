"""A held event loop is noticed (log and metric); an ordinary busy loop is not."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.loop_watch import LoopWatch
from gateway.metrics import GatewayMetrics

TICK_S = 0.1


async def test_a_blocking_call_on_the_loop_is_reported_with_its_length(caplog):
    metrics = GatewayMetrics()
    watch = LoopWatch(metrics.loop_stalls.observe, stall_s=0.5, tick_s=TICK_S)
    watch.start()
    await asyncio.sleep(TICK_S / 2)
    with caplog.at_level(logging.WARNING, logger="gateway.loop_watch"):
        time.sleep(1.0)  # what a blocking call in a coroutine does to everyone else
        await asyncio.sleep(TICK_S * 2)
    await watch.stop()
    count = metrics.registry.get_sample_value("tunegate_event_loop_stall_seconds_count")
    total = metrics.registry.get_sample_value("tunegate_event_loop_stall_seconds_sum")
    assert count == 1 and 0.5 <= total < 1.5
    assert "event loop was held" in caplog.text


async def test_a_loop_that_keeps_turning_reports_nothing():
    stalls: list[float] = []
    watch = LoopWatch(stalls.append, stall_s=0.5, tick_s=TICK_S)
    watch.start()
    for _ in range(20):
        time.sleep(0.02)  # short holds, as ordinary work makes
        await asyncio.sleep(0.03)
    await watch.stop()
    assert stalls == []
