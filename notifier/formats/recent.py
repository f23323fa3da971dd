"""A bounded memory of recently seen ids: for dropping a repeated publish or a repeated control command."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class RecentIds:
    """Remembers ids for `window_s` seconds, at most `max_ids` of them (the oldest are forgotten first).

    A window or size of 0 remembers nothing.
    """

    def __init__(self, window_s: float, max_ids: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._max_ids = max_ids
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when it was added, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, item: object) -> bool:
        self._expire()
        return item in self._seen

    def add(self, item: str) -> None:
        if self._window_s <= 0 or self._max_ids <= 0:
            return
        self._seen.pop(item, None)
        self._seen[item] = self._clock()
        while len(self._seen) > self._max_ids:
            self._seen.popitem(last=False)

    def _expire(self) -> None:
        horizon = self._clock() - self._window_s
        seen = self._seen
        while seen:
            oldest, added = next(iter(seen.items()))
            if added > horizon:
                return
            del seen[oldest]
