"""What a session sent recently, so a client that reconnects can be given exactly what it missed.

Each entry is the event frame the hub built once for every receiver (a reference, not a copy), numbered in the
order it was handed to this session: the n-th event frame a client receives is entry n. A client that comes
back says how many it received; everything after that is replayed, if the history still holds it all.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from notifier.wire import Frame


class History:
    """The last event frames of one session, bounded by age (`window_s`) and by count (`max_events`)."""

    __slots__ = ("_clock", "_entries", "_max_events", "_window_s", "sent")

    def __init__(
        self, *, window_s: float, max_events: int, sent: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._max_events = max_events
        self._clock = clock
        self._entries: deque[tuple[float, Frame]] = deque()
        self.sent = sent  # event frames handed to this session so far: the number of the newest entry

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        return len(self._entries) >= self._max_events

    def record(self, frame: Frame) -> None:
        """Number `frame` as the next event frame of the session; forget the oldest past either bound."""
        now = self._clock()
        entries = self._entries
        entries.append((now, frame))
        self.sent += 1
        if len(entries) > self._max_events:
            entries.popleft()
        horizon = now - self._window_s
        while entries and entries[0][0] < horizon:
            entries.popleft()

    def after(self, received: int) -> list[Frame] | None:
        """The frames after the `received`-th, in order; None if some of them are no longer held (or the count
        is not one this session reached)."""
        if not 0 <= received <= self.sent:
            return None
        missed = self.sent - received
        if missed > len(self._entries):
            return None
        if missed == 0:
            return []
        entries = self._entries
        return [entries[index][1] for index in range(len(entries) - missed, len(entries))]
