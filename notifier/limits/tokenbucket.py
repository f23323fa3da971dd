"""A token bucket: the frames-per-second budget of one connection (text frames and pings alike)."""

from __future__ import annotations

import time

# Where a session finds its connection's frame budget (in the ASGI scope), so text frames and pings share one
# bucket: the server's protocol puts it there, the session spends from it.
FRAME_BUDGET_SCOPE_KEY = "notifier.frame_budget"


class RateLimiter:
    """A token bucket: `rate` tokens a second, holding at most `burst`."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
