"""Connection limits of one instance: how many connections in all, and how many per user."""

from __future__ import annotations

from collections import Counter


class Admission:
    """Counts open connections and authenticated users against NOTIFIER_MAX_CONNECTIONS and
    NOTIFIER_MAX_CONNECTIONS_PER_USER. Every `open_connection` is paired with one `close_connection`, every
    admitted user with one `release_user`."""

    __slots__ = ("_max_connections", "_max_per_user", "_per_user", "authenticated", "connections")

    def __init__(self, *, max_connections: int, max_connections_per_user: int) -> None:
        self._max_connections = max_connections
        self._max_per_user = max_connections_per_user
        self._per_user: Counter[str] = Counter()
        self.connections = 0
        self.authenticated = 0  # connections that signed in; the rest of `connections` have not (yet)

    def open_connection(self) -> bool:
        """Count one more connection; False when that puts the instance over its limit (the caller closes it,
        and still calls `close_connection`)."""
        self.connections += 1
        return self.connections <= self._max_connections

    def close_connection(self) -> None:
        self.connections -= 1

    def admit_user(self, user: str) -> bool:
        """Count one more connection for `user`, unless that would pass the per-user limit."""
        if self._per_user[user] >= self._max_per_user:
            return False
        self._per_user[user] += 1
        self.authenticated += 1
        return True

    def release_user(self, user: str) -> None:
        self.authenticated -= 1
        self._per_user[user] -= 1
        if self._per_user[user] <= 0:
            del self._per_user[user]

    @property
    def users(self) -> int:
        """Users with at least one authenticated connection."""
        return len(self._per_user)

    def connections_of(self, user: str) -> int:
        return self._per_user.get(user, 0)
