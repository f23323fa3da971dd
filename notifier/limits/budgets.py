"""Per-user budgets on one instance, across all of a user's connections: subscribe and unsubscribe operations
per second (each may bind or unbind at RabbitMQ, and reconnecting does not refill it) and distinct topics
held. Pure bookkeeping; the session asks before it binds and tells after it lets go."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

# Users with no topic held are remembered for their rate only; past this many they are forgotten.
MAX_IDLE_USERS = 50_000


class _User:
    __slots__ = ("last", "tokens", "topics")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.topics: Counter[str] = Counter()  # topic -> connections of this user holding it


class UserBudgets:
    """Operations per second and distinct topics per user; `spend` and `hold` say no rather than wait."""

    def __init__(
        self,
        *,
        operations_per_s: float,
        operations_burst: int,
        max_topics: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = operations_per_s
        self._burst = float(operations_burst)
        self.max_topics = max_topics
        self._clock = clock
        self._users: dict[str, _User] = {}

    def __len__(self) -> int:
        return len(self._users)

    def spend(self, user: str) -> bool:
        """Take one subscribe/unsubscribe operation from `user`'s budget; False if it is spent."""
        entry = self._entry(user)
        if entry.tokens < 1.0:
            return False
        entry.tokens -= 1.0
        return True

    def hold(self, user: str, topic: str) -> bool:
        """Count one more connection of `user` on `topic`; False if it is a new topic past the limit."""
        topics = self._entry(user).topics
        if topic not in topics and len(topics) >= self.max_topics:
            return False
        topics[topic] += 1
        return True

    def release(self, user: str, topic: str) -> None:
        """One connection of `user` let go of `topic` (counted by `hold`)."""
        entry = self._users.get(user)
        if entry is None or topic not in entry.topics:
            return
        entry.topics[topic] -= 1
        if entry.topics[topic] <= 0:
            del entry.topics[topic]

    def topics_held(self, user: str) -> int:
        entry = self._users.get(user)
        return len(entry.topics) if entry else 0

    def _entry(self, user: str) -> _User:
        now = self._clock()
        entry = self._users.get(user)
        if entry is None:
            if len(self._users) >= MAX_IDLE_USERS:
                self._users = {name: held for name, held in self._users.items() if held.topics}
            entry = self._users[user] = _User(self._burst, now)
        else:
            entry.tokens = min(self._burst, entry.tokens + (now - entry.last) * self._rate)
            entry.last = now
        return entry
