"""The token bucket behind every rate in notifier: a connection's frames per second (text frames and pings
alike), an address's new connections per second (gate) and a user's subscribe operations per second
(budgets)."""

from __future__ import annotations

import time

# Where a session finds its connection's frame budget (in the ASGI scope), so text frames and pings share one
# bucket: the server's protocol puts it there, the session spends from it.
FRAME_BUDGET_SCOPE_KEY = "notifier.frame_budget"


class TokenBucket:
    """Tokens that come back at `rate` a second up to `burst`; each allowed action takes one.

    A bucket holds only its own state, the tokens and when they were last counted: the rate, the burst and the
    clock are its owner's, passed in. The gate and the per-user budgets keep a bucket for each of thousands of
    addresses and users under one policy, so their entries subclass this and add their own slots (an entry
    stays one small object: no per-entry copy of the policy, no second object)."""

    __slots__ = ("last", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = float(burst)  # a new bucket starts full
        self.last = now

    def refill(self, rate: float, burst: float, now: float) -> None:
        """Add the tokens that came back since the last count, up to `burst`."""
        self.tokens = min(burst, self.tokens + (now - self.last) * rate)
        self.last = now

    def take(self) -> bool:
        """Take one token if there is one (the owner refills first); False if the bucket is empty."""
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateLimiter(TokenBucket):
    """A token bucket that carries its own policy: `rate` tokens a second, holding at most `burst`. One per
    connection, for its frames."""

    __slots__ = ("_burst", "_rate")

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__(burst, time.monotonic())
        self._rate = rate
        self._burst = float(burst)

    def allow(self) -> bool:
        """Take one token now; False if the budget is spent."""
        self.refill(self._rate, self._burst, time.monotonic())
        return self.take()
