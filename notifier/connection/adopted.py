"""Sessions adopted from an instance that is stopping, before their clients came back.

A stopping instance can keep its parked sessions only until NOTIFIER_SHUTDOWN_TIMEOUT_S, and when all its clients
reconnect at once many come back later than that. So it asks a peer to adopt what is still parked: the peer
takes each session over (its topics bound here first, then its events, as a resume from another instance
does), keeps it parked under its id, and keeps collecting its events, numbered as the stopping instance numbered
them; the client resumes it here, or on a third instance through the hand-over, as if nothing had moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import structlog

from notifier.broker import BrokerUnavailable
from notifier.connection.auth import Identity
from notifier.connection.history import History
from notifier.formats.closecodes import CloseReason
from notifier.formats.wire import Frame

if TYPE_CHECKING:
    from notifier.connection.resume import RemoteSessions
    from notifier.connection.session import SessionContext

log = structlog.get_logger("notifier.session")

ParkedSession = tuple[str, str, list[str] | None]
"""A parked session given to a peer: its id, its user, and its topics (None from a holder of an earlier release,
which does not send them: the adopter asks for them)."""


class AdoptedSession:
    """A parked session taken over from a stopping instance: no connection, its topics held in this instance's
    hub, its events kept for its client's resume until its window passes."""

    def __init__(self, session_id: str, user: str, context: SessionContext) -> None:
        self.session_id: str | None = session_id
        self._user = user
        self._context = context
        self.topics: set[str] = set()
        self.history = History.from_settings(context.settings)
        self._handed_ids: frozenset[str] = frozenset()
        self._held = True  # False once its client resumed it, or it ended
        # Done (True if it was taken over whole) once the adoption is over; a client that resumes meanwhile waits.
        self.adopted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """Bound when something is to be logged: a stopping instance's peer adopts thousands at once."""
        return log.bind(session=self.session_id, user=self._user)  # type: ignore[no-any-return]

    @property
    def user(self) -> str | None:
        return self._user

    @property
    def parked(self) -> bool:
        return self._held

    @property
    def awaiting_auth(self) -> bool:
        return False

    # The hub's side.

    def offer(self, frame: Frame) -> None:
        """Keep an event for the client (one the stopping instance already handed over is not kept twice)."""
        if self._held and frame.event_id not in self._handed_ids:
            self.history.record(frame)

    # Taking it over: its client resumes it here, or another instance takes it.

    def frames_after(self, received: int) -> list[Frame] | None:
        return self.history.after(received)

    def delivered_ids(self, received: int, limit: int) -> list[str]:
        return self.history.ids_until(received, limit)

    def hand_over(self) -> None:
        self._held = False
        self._context.directory.forget(self)

    def hand_over_to_another_instance(self) -> None:
        self.hand_over()
        self._context.directory.release_later(self.release_slot_and_topics())

    def expire(self) -> Coroutine[Any, Any, None] | None:
        if not self._held:
            return None
        self._held = False
        self.log.info("parked_session_ended")
        return self.release_slot_and_topics()

    async def release_slot_and_topics(self) -> None:
        """Give back every topic it still holds (it holds no connection slot)."""
        for topic in tuple(self.topics):
            self._context.budgets.release(self._user, topic)
            await self._context.hub.unsubscribe(self, topic)
        self.topics.clear()

    # What a connection would do; an adopted session has none.

    def close(self, reason: CloseReason, *, drop_pending: bool = False) -> None:
        """No connection to close."""

    def admit(self, identity: Identity) -> bool:
        return False

    def go_live(
        self, identity: Identity, topics: list[str], *, recovered: bool, dropped: list[str] | None = None
    ) -> None:
        raise RuntimeError("an adopted session has no connection to go live on")

    def skip_late_repeats(self, event_ids: frozenset[str] | None) -> None:
        """It drops the events it was handed by itself, for as long as it is held."""

    async def adopt(self, remote: RemoteSessions, topics: list[str] | None) -> bool:
        """Take the session over from its holder: bind its topics here (`topics` if the holder sent them, else
        asked for), then take every event it holds and merge those that reached this instance since. False if
        it could not be had whole."""
        try:
            adopted = await self._take_from(remote, topics)
        except BaseException:
            self.adopted.set_result(False)
            raise
        self.adopted.set_result(adopted)
        return adopted

    def held_frames(self) -> tuple[list[Frame], int] | None:
        return self.history.held()

    async def _take_from(self, remote: RemoteSessions, topics: list[str] | None) -> bool:
        context = self._context
        held = topics if topics is not None else await remote.topics_of(self.session_id or "", self._user)
        if held is None:
            return False
        personal = f"user.{self._user}"
        try:
            for topic in held:
                if topic != personal and not context.budgets.hold(self._user, topic):
                    continue
                self.topics.add(topic)
                await context.hub.subscribe(self, topic)
        except BrokerUnavailable as error:
            self.log.warning("adoption_topics_unavailable", error=str(error))
            await self.release_slot_and_topics()
            return False
        handed = await remote.take(self.session_id or "", self._user, None)
        if handed is None or handed.sent is None or not self._held:
            await self.release_slot_and_topics()
            return False
        collected = self.history.after(0) or []  # what reached this instance since its binds
        history = History.from_settings(context.settings, sent=handed.sent - len(handed.frames))
        for frame in handed.frames:
            history.record(frame)
        self._handed_ids = frozenset(frame.event_id for frame in handed.frames if frame.event_id)
        for frame in collected:
            if frame.event_id not in self._handed_ids:
                history.record(frame)
        self.history = history
        return True


async def adopt_sessions(context: SessionContext, remote: RemoteSessions, sessions: list[ParkedSession]) -> int:
    """Adopt each (session id, user, topics or None) from its stopping holder, parked here under the same id; how
    many were."""
    directory = context.directory

    async def adopt_one(session_id: str, user: str, topics: list[str] | None) -> bool:
        if directory.find(session_id) is not None or session_id in directory.resuming:
            return False  # its client is back already, and resumes it itself
        adopted = AdoptedSession(session_id, user, context)
        directory.register(adopted)
        if not await adopted.adopt(remote, topics):
            directory.forget(adopted)
            return False
        if directory.find(session_id) is adopted:  # not resumed meanwhile
            directory.park(adopted)
        return True

    results = await asyncio.gather(*(adopt_one(*parked) for parked in sessions))
    return sum(results)
