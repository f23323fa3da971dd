"""Session hand-over between instances: a client that resumes on an instance that does not hold its session
gets it from the instance that does, over the control plane.

The new instance first asks the holder which topics the session holds (`session.describe`), binds them
(events from the bind on are kept by the new session), then asks for the events after the client's count
(`session.hand_over`); the holder answers with them and lets go of the session. The new instance merges:
handed-over events first, then the ones it received itself that were not among them (same event id).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog

from notifier.broker import BrokerUnavailable
from notifier.cluster.codec import CommandResult
from notifier.cluster.control import ControlPlane
from notifier.connection.directory import SessionDirectory
from notifier.formats.wire import Frame

log = structlog.get_logger("notifier.handover")

DESCRIBE = "session.describe"
HAND_OVER = "session.hand_over"

# A hand-over larger than this is refused (the client gets `recovered: false`): it travels as one message.
MAX_HANDOVER_BYTES = 16 * 1024 * 1024
# Requests to other instances in flight at once; in a reconnect storm the rest wait their turn rather than
# overrun the control plane's bound on pending requests (the wait is not counted against the timeout).
MAX_REQUESTS_IN_FLIGHT = 200


class HeldSession(Protocol):
    """A session as the holder sees it."""

    @property
    def user(self) -> str | None: ...

    @property
    def topics(self) -> set[str]: ...

    def frames_after(self, received: int) -> list[Frame] | None: ...

    def hand_over_to_another_instance(self) -> None:
        """Let go of the session: it is someone else's now, and what it holds is released."""


class SessionHandOver:
    """Both sides of a hand-over: asking another instance for a session, and answering for our own."""

    def __init__(self, control: ControlPlane, directory: SessionDirectory, *, timeout_s: float) -> None:
        self._control = control
        self._directory = directory
        self._timeout_s = timeout_s
        self._in_flight = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        control.on(DESCRIBE, self._describe)
        control.on(HAND_OVER, self._hand_over)

    def holder(self, session_id: str) -> str | None:
        """The other instance that holds `session_id`, or None when it names this one (or none)."""
        holder = self._directory.holder_of(session_id)
        if not holder or holder == self._directory.instance_id:
            return None
        return holder

    def others_alive(self) -> bool:
        """Whether another instance could take our sessions over: one was heard from lately (or the control
        plane cannot tell)."""
        live = self._control.live_instances()
        return live is None or bool(live - {self._directory.instance_id})

    def _alive(self, holder: str) -> bool:
        """False when the control plane knows the holder is gone (it said goodbye, or went quiet): then the
        answer is `recovered: false` at once rather than after a timeout."""
        live = self._control.live_instances()
        return live is None or holder in live

    # The asking side.

    async def topics_of(self, session_id: str, user: str) -> list[str] | None:
        """The topics the session holds on its instance, or None if it cannot be resumed from there."""
        holder = self.holder(session_id)
        if holder is None or not self._alive(holder):
            return None
        reply = await self._ask(holder, DESCRIBE, {"session": session_id, "user": user})
        if not reply or not reply.get("found"):
            return None
        topics = reply.get("topics")
        if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
            log.warning("handover_bad_reply", holder=holder, kind=DESCRIBE)
            return None
        return topics

    async def take(self, session_id: str, user: str, received: int) -> list[Frame] | None:
        """The session's event frames after the `received`-th; the holder lets go of it. None if it could not
        be had whole."""
        holder = self.holder(session_id)
        if holder is None:
            return None
        args = {"session": session_id, "user": user, "received": received}
        reply = await self._ask(holder, HAND_OVER, args)
        if not reply or not reply.get("found"):
            return None
        try:
            return [Frame(item["payload"].encode(), item["topic"], item["id"]) for item in reply["frames"]]
        except (KeyError, TypeError, AttributeError):
            log.warning("handover_bad_reply", holder=holder, kind=HAND_OVER)
            return None

    async def _ask(self, holder: str, kind: str, args: dict[str, Any]) -> CommandResult:
        """The holder's answer, or None when there is none in time (or the request could not be sent)."""
        async with self._in_flight:
            try:
                return await self._control.ask(holder, kind, args, timeout=self._timeout_s)
            except BrokerUnavailable as error:
                log.info("handover_request_not_sent", holder=holder, kind=kind, error=str(error))
                return None

    # The holding side.

    def _held(self, args: dict[str, Any]) -> HeldSession | None:
        session_id, user = args.get("session"), args.get("user")
        if not isinstance(session_id, str) or not isinstance(user, str):
            return None
        session = self._directory.find(session_id)
        if session is None or getattr(session, "user", None) != user:
            return None  # unknown here, or another user's: the same answer, so nothing leaks
        return session  # type: ignore[return-value]

    async def _describe(self, args: dict[str, Any]) -> CommandResult:
        session = self._held(args)
        if session is None:
            return {"found": False}
        return {"found": True, "topics": sorted(session.topics)}

    async def _hand_over(self, args: dict[str, Any]) -> CommandResult:
        session = self._held(args)
        received = args.get("received")
        if session is None or isinstance(received, bool) or not isinstance(received, int):
            return {"found": False}
        frames = session.frames_after(received)
        if frames is None or sum(len(frame.payload) for frame in frames) > MAX_HANDOVER_BYTES:
            return {"found": False}
        items = [{"topic": frame.topic, "id": frame.event_id, "payload": frame.payload.decode()} for frame in frames]
        session.hand_over_to_another_instance()
        log.info("session_handed_over", events=len(items))
        return {"found": True, "frames": items}
