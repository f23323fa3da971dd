"""Per-user budgets on one instance, across all of a user's connections: subscribe and unsubscribe operations
per second (each may bind or unbind at RabbitMQ, and reconnecting does not refill it) and distinct topics
held. Pure bookkeeping; the session asks before it binds and tells after it lets go."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from notifier.limits.tokenbucket import TokenBucket

# Users with no topic held are remembered for their rate only; past this many they are forgotten.
MAX_IDLE_USERS = 50_000


class _User(TokenBucket):
    """One user: its bucket of operations, and the topics its connections hold."""

    __slots__ = ("topics",)

    def __init__(self, burst: float, now: float) -> None:
        super().__init__(burst, now)
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
        return self._entry(user).take()

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
            entry.refill(self._rate, self._burst, now)
        return entry
