"""Stand-ins that tests hand to the code under test in place of the real thing."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that moves only when the test sets `now`: pass it where code takes `clock=`."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
