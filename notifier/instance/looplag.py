"""How late the event loop runs what is due: every connection, ping and broker heartbeat waits as long.

A loop that falls seconds behind (a storm of handshakes, a blocking call) misses the broker's heartbeats, and
RabbitMQ closes the connection; the lag histogram and the `event_loop_stalled` log line show it first.
"""

from __future__ import annotations

import asyncio

import structlog

from notifier.stats import LatencyHistogram

log = structlog.get_logger("notifier.loop")

PROBE_INTERVAL_S = 0.5
# A lag past this is logged: it is a third of the shortest broker heartbeat timeout worth running with.
STALL_LOG_S = 1.0


async def watch_loop_lag(histogram: LatencyHistogram) -> None:
    """Sleep PROBE_INTERVAL_S over and over and record how much later than asked each sleep ended."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + PROBE_INTERVAL_S
        await asyncio.sleep(PROBE_INTERVAL_S)
        lag = loop.time() - asked
        histogram.observe(lag)
        if lag >= STALL_LOG_S:
            log.warning("event_loop_stalled", seconds=round(lag, 3))
