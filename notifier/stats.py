"""The instance's counters, in one object: the hot path bumps plain ints here and /metrics reads them."""

from __future__ import annotations

import bisect
from collections import Counter


class LatencyHistogram:
    """A histogram of seconds: publish-to-hand-off latency, event loop lag."""

    BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BUCKETS_S) + 1)
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(self.BUCKETS_S, seconds)] += 1
        self.total_s += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.BUCKETS_S, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return buckets


class Stats:
    """Counters of one instance. Each has one writer; /metrics only reads."""

    __slots__ = (
        "closes_by_code",
        "events_in",
        "frames_dropped",
        "frames_out",
        "latency",
        "loop_lag",
        "proxy_requests",
        "publish_results",
        "resumes",
        "resyncs_sent",
        "sse_closes_by_code",
        "stream_commands",
    )

    def __init__(self) -> None:
        self.events_in = 0  # events taken from the broker (hub)
        self.frames_out = 0  # event frames handed to sessions (hub)
        self.frames_dropped = 0  # frames discarded with a slow client's queue (session)
        self.closes_by_code: Counter[int] = Counter()  # server-side closes (session)
        self.sse_closes_by_code: Counter[int] = Counter()  # of those, the closes of HTTP streams (session)
        # Commands of HTTP streams (POST /sse/<key>) by result: accepted, unknown_stream, too_big, rate_limited,
        # unavailable, forwarded (notifier/http/routes/stream.py)
        self.stream_commands: Counter[str] = Counter()
        self.publish_results: Counter[int] = Counter()  # HTTP publish answers by status (publish route)
        # Requests to the application's proxies, by (proxy, result): connect or subscribe; allowed, refused,
        # unavailable or invalid (notifier/connection/proxy.py)
        self.proxy_requests: Counter[tuple[str, str]] = Counter()
        self.latency = LatencyHistogram()  # hub
        self.loop_lag = LatencyHistogram()  # notifier/looplag.py
        # Sign-ins that asked to resume a session, by outcome: recovered, not_recovered (session)
        self.resumes: Counter[str] = Counter()
        self.resyncs_sent = 0  # `resync` frames sent after a gap in routing (node)
