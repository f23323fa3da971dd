"""New connections take turns: at most a few handshakes per event loop iteration, the rest in arrival order.

asyncio runs, in one iteration, everything that became ready during the last one. When ten thousand browsers
connect at once, their handshakes (and, one iteration later, their logins) would all run in one iteration that
lasts seconds: no ping, no event for the clients already connected, no heartbeat to RabbitMQ, which then
closes the connection. Taking turns costs nothing in throughput (the work is the same) and keeps every
iteration short.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class TurnPacer:
    """Lets `per_turn` callers through per event loop iteration; the others wait, first come first served."""

    def __init__(self, per_turn: int) -> None:
        self._per_turn = per_turn
        self._left = per_turn
        self._waiting: deque[Callable[[], None]] = deque()
        self._refill_scheduled = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def take(self) -> bool:
        """Take a turn in this iteration if one is left and no one is waiting for one."""
        if self._waiting or self._left <= 0:
            return False
        self._left -= 1
        self._schedule_refill()
        return True

    def wait(self, on_turn: Callable[[], None]) -> None:
        """Call `on_turn` in a later iteration, when this caller's turn comes."""
        self._waiting.append(on_turn)
        self._schedule_refill()

    def _schedule_refill(self) -> None:
        if not self._refill_scheduled:
            self._refill_scheduled = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        """Runs once per iteration while turns are being taken: a fresh allowance, spent on the waiting first."""
        self._refill_scheduled = False
        self._left = self._per_turn
        while self._waiting and self._left > 0:
            self._left -= 1
            self._waiting.popleft()()
        if self._waiting or self._left < self._per_turn:
            self._schedule_refill()
