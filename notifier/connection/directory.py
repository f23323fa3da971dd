"""Every resumable session of this instance by its id: the connected ones, and the parked ones whose client
may still come back. Parked sessions end when their window passes, or oldest first past the bound."""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, Protocol


class Resumable(Protocol):
    session_id: str | None

    def expire(self) -> Coroutine[Any, Any, None] | None:
        """End a parked session; returns the release still to run, if any."""


class SessionDirectory:
    """Session ids, and the parking of sessions whose connection ended without a goodbye."""

    def __init__(self, instance_id: str, *, window_s: float, max_parked: int) -> None:
        self.instance_id = instance_id
        self.window_s = window_s
        self._max_parked = max_parked
        self._by_id: dict[str, Resumable] = {}
        self._parked: OrderedDict[str, asyncio.TimerHandle] = OrderedDict()
        self._releasing: set[asyncio.Task[None]] = set()
        self.parking = True  # False once the instance stops with no one to hand its sessions to
        # Sessions of other instances that a connection here is taking over right now (by their old id).
        self.resuming: set[str] = set()

    @property
    def parked_count(self) -> int:
        return len(self._parked)

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
        timer = self._parked.pop(session.session_id, None)
        if timer is not None:
            timer.cancel()

    def park(self, session: Resumable) -> None:
        """Keep `session` for the window; past NOTIFIER_MAX_PARKED_SESSIONS the oldest parked one ends."""
        assert session.session_id is not None
        loop = asyncio.get_running_loop()
        self._parked[session.session_id] = loop.call_later(self.window_s, self.end, session)
        while len(self._parked) > self._max_parked:
            oldest_id = next(iter(self._parked))
            oldest = self._by_id.get(oldest_id)
            if oldest is None:
                self._parked.pop(oldest_id).cancel()
            else:
                self.end(oldest)

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
