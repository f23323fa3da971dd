"""Every resumable session of this instance by its id: the connected ones, and the parked ones whose client
may still come back. Parked sessions end when their window passes, or past a bound: a user's own oldest past
its per-user bound, and past the instance's bound the oldest of the user with the most parked, so one user's
drops never end another user's session while that one holds no more than any other."""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, Protocol


class Resumable(Protocol):
    session_id: str | None

    @property
    def user(self) -> str | None: ...

    def expire(self) -> Coroutine[Any, Any, None] | None:
        """End a parked session; returns the release still to run, if any."""


class SessionDirectory:
    """Session ids, and the parking of sessions whose connection ended without a goodbye."""

    def __init__(self, instance_id: str, *, window_s: float, max_parked: int, max_parked_per_user: int) -> None:
        self.instance_id = instance_id
        self.window_s = window_s
        self._max_parked = max_parked
        self._max_parked_per_user = max_parked_per_user
        self._by_id: dict[str, Resumable] = {}
        self._parked: OrderedDict[str, asyncio.TimerHandle] = OrderedDict()
        # Parked session ids by user, oldest first, and users by how many they have parked (each bucket in the
        # order its users reached that count): the user with the most is found without a scan.
        self._parked_user: dict[str, str] = {}
        self._by_user: dict[str, OrderedDict[str, None]] = {}
        self._users_by_count: dict[int, dict[str, None]] = {}
        self._most = 0
        self._releasing: set[asyncio.Task[None]] = set()
        self.parking = True  # False once the instance stops with no one to hand its sessions to
        # Sessions of other instances that a connection here is taking over right now (by their old id).
        self.resuming: set[str] = set()

    @property
    def parked_count(self) -> int:
        return len(self._parked)

    def parked_count_of(self, user: str) -> int:
        return len(self._by_user.get(user, ()))

    def new_id(self) -> str:
        """An unguessable id (128 random bits) that names this instance, so any instance can tell who holds it."""
        return f"{self.instance_id}.{secrets.token_urlsafe(16)}"

    def holder_of(self, session_id: str) -> str:
        """The instance id a session id names."""
        return session_id.rpartition(".")[0]

    def register(self, session: Resumable) -> None:
        assert session.session_id is not None
        self._by_id[session.session_id] = session

    def find(self, session_id: str) -> Resumable | None:
        return self._by_id.get(session_id)

    def forget(self, session: Resumable) -> None:
        """The session can no longer be resumed here (ended, or handed to a new connection)."""
        if session.session_id is None:
            return
        self._by_id.pop(session.session_id, None)
        self._unpark(session.session_id)

    def _unpark(self, session_id: str) -> None:
        timer = self._parked.pop(session_id, None)
        if timer is None:
            return
        timer.cancel()
        user = self._parked_user.pop(session_id)
        own = self._by_user[user]
        self._move(user, len(own), len(own) - 1)
        del own[session_id]
        if not own:
            del self._by_user[user]

    def _move(self, user: str, count: int, new_count: int) -> None:
        """`user` goes from `count` parked sessions to `new_count` in the buckets by count."""
        if count:
            bucket = self._users_by_count[count]
            del bucket[user]
            if not bucket:
                del self._users_by_count[count]
        if new_count:
            self._users_by_count.setdefault(new_count, {})[user] = None
        if new_count > self._most:
            self._most = new_count
        while self._most and self._most not in self._users_by_count:
            self._most -= 1

    def park(self, session: Resumable) -> None:
        """Keep `session` for the window. Past NOTIFIER_MAX_PARKED_SESSIONS_PER_USER the user's own oldest parked
        session ends; past NOTIFIER_MAX_PARKED_SESSIONS the oldest of the user with the most parked ends (of
        the users with that many, the one that reached it first): a user is never evicted for another while it
        holds fewer parked sessions than that one."""
        assert session.session_id is not None
        loop = asyncio.get_running_loop()
        user = session.user or ""
        session_id = session.session_id
        self._parked[session_id] = loop.call_later(self.window_s, self.end, session)
        self._parked_user[session_id] = user
        own = self._by_user.setdefault(user, OrderedDict())
        own[session_id] = None
        self._move(user, len(own) - 1, len(own))
        while len(own) > self._max_parked_per_user:
            self._end_parked(next(iter(own)))
        while len(self._parked) > self._max_parked:
            greediest = next(iter(self._users_by_count[self._most]))
            self._end_parked(next(iter(self._by_user[greediest])))

    def _end_parked(self, session_id: str) -> None:
        parked = self._by_id.get(session_id)
        if parked is None:
            self._unpark(session_id)
        else:
            self.end(parked)

    def end(self, session: Resumable) -> None:
        """End a parked session now: it can no longer be resumed, and what it holds is released."""
        self.forget(session)
        release = session.expire()
        if release is not None:
            self.release_later(release)

    def release_later(self, release: Coroutine[Any, Any, None]) -> None:
        """Run a session's release (its unbinds) in the background; `wait_released` waits for it."""
        task = asyncio.ensure_future(release)
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def parked_sessions(self) -> list[Resumable]:
        """The sessions parked now, oldest first."""
        return [self._by_id[session_id] for session_id in self._parked if session_id in self._by_id]

    def parked_since(self, before: float) -> list[Resumable]:
        """The sessions parked at or before `before` (the loop's clock) and parked still, oldest first."""
        found = []
        for session_id, timer in self._parked.items():
            if timer.when() - self.window_s > before:
                break  # parked in order: the rest are newer
            session = self._by_id.get(session_id)
            if session is not None:
                found.append(session)
        return found

    def end_all_parked(self) -> None:
        """End every parked session now (the instance is stopping)."""
        for session_id in tuple(self._parked):
            session = self._by_id.get(session_id)
            if session is not None:
                self.end(session)

    async def wait_released(self) -> None:
        """Wait for the releases of ended sessions (their unbinds) to finish."""
        if self._releasing:
            await asyncio.wait(tuple(self._releasing))
