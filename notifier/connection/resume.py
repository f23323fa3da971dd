"""Session resume: a new connection that signs in with `resume` takes over the session its client had, all or
nothing. Three paths:

- the session is here (connected or parked): take it over without awaiting, its subscriptions moved to the new
  connection and its events after the client's count replayed (`take_over_here`);
- another instance holds it: bind its topics, take its events from that instance over the control plane and
  merge both by event id (`resume_from_another_instance`, with notifier/cluster/handover.py on the other end);
- that instance could not hand it over whole: a fresh session with the personal topic only
  (`start_fresh_after_failed_resume`).

Each path works on sessions through `ResumableSession`, the public side of notifier/connection/session.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import structlog

from notifier.broker import BrokerUnavailable
from notifier.connection.adopted import AdoptedSession
from notifier.connection.auth import Identity
from notifier.connection.history import History
from notifier.formats import closecodes, messages
from notifier.formats.closecodes import CloseReason
from notifier.formats.wire import Frame

if TYPE_CHECKING:
    from notifier.connection.session import SessionContext


@dataclass(frozen=True)
class Handed:
    """A session handed over by another instance: the events after the client's count, and the ids of the last
    events the client had already received there (one of those may still reach this instance late, through a
    binding it already had: it must not be sent again)."""

    frames: list[Frame]
    delivered: frozenset[str]
    sent: int | None = None
    """With every event held asked for: how many the holder had handed to the session in all."""


class RemoteSessions(Protocol):
    """Sessions held by other instances (see notifier/cluster/handover.py)."""

    def holder(self, session_id: str) -> str | None: ...

    async def topics_of(self, session_id: str, user: str) -> list[str] | None: ...

    async def take(self, session_id: str, user: str, received: int | None) -> Handed | None:
        """The events after the client's `received`-th (None: every one held); the holder lets go."""


@runtime_checkable
class ResumableSession(Protocol):
    """What resume does with a session, on either side: the one the client had, and the new connection's."""

    topics: set[str]
    history: History

    @property
    def user(self) -> str | None: ...

    @property
    def parked(self) -> bool:
        """Its connection ended without a goodbye: it keeps collecting events for a resume."""

    @property
    def awaiting_auth(self) -> bool:
        """Its connection has not signed in yet (and is not closing)."""

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """The logger bound to its connection."""

    def offer(self, frame: Frame) -> None:
        """Take one event frame: send it (or queue it), and keep it for a resume."""

    def close(self, reason: CloseReason, *, drop_pending: bool = False) -> None:
        """Close the connection with `reason`."""

    def frames_after(self, received: int) -> list[Frame] | None:
        """The event frames after the client's `received`-th, or None if they are not all held."""

    def hand_over(self) -> None:
        """A new connection resumes it: it stops holding anything."""

    def admit(self, identity: Identity) -> bool:
        """Take one of the user's connection slots for it, or close it with 4502."""

    def go_live(
        self, identity: Identity, topics: list[str], *, recovered: bool, dropped: list[str] | None = None
    ) -> None:
        """Give it a session id, open it and send the welcome."""

    def skip_late_repeats(self, event_ids: frozenset[str] | None) -> None:
        """Drop these events if they reach it from now on (None: stop dropping)."""

    async def release_slot_and_topics(self) -> None:
        """Give back the user's connection slot, then every topic it still holds."""


AskApplication = Callable[[str, list[str]], Awaitable[set[str]]]
"""Of a user's topics, those the application's subscribe proxy allows (Session.allowed_by_application)."""


async def resume_session(
    session: ResumableSession,
    context: SessionContext,
    identity: Identity,
    resume: messages.Resume,
    ask_application: AskApplication | None = None,
) -> bool:
    """Resume into `session`, which is awaiting auth, the session `resume` names. Returns False when there is no
    such session to try, here or on another instance: the caller starts a fresh one. True when this dealt with
    the login: the session is resumed, started fresh after a failed hand-over, or closed. Restored topics the
    grants do not cover are kept only if `ask_application` (the subscribe proxy) allows them."""
    adopting = context.directory.find(resume.session)
    if isinstance(adopting, AdoptedSession) and not adopting.adopted.done():
        # Being adopted from its stopping holder right now: resume it here once that is done.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(adopting.adopted), context.settings.resume_timeout_s)
        if not session.awaiting_auth:
            return True
    # Topics of the session here that the grants do not cover are asked of the subscribe proxy first: the
    # take-over itself must not await.
    old = context.directory.find(resume.session)
    also_allowed: set[str] = set()
    if ask_application is not None and isinstance(old, ResumableSession) and old is not session:
        not_granted = [topic for topic in old.topics if not identity.grants.allows(topic)]
        if old.user == identity.user and not_granted:
            also_allowed = await ask_application(identity.user, not_granted)
            if not session.awaiting_auth:
                return True  # closed while the application was asked
    taken_over = take_over_here(session, context, identity, resume, also_allowed)
    if taken_over is not None:
        await taken_over.release_slot_and_topics()  # the topics the new token no longer grants (or all, if refused)
        return True
    if not session.awaiting_auth:
        return True  # refused (4502) while its session stays parked here for a later resume
    remote = context.remote_sessions
    if remote is not None and remote.holder(resume.session) is not None:
        resuming = context.directory.resuming
        resuming.add(resume.session)
        try:
            await resume_from_another_instance(session, context, remote, identity, resume, ask_application)
        finally:
            resuming.discard(resume.session)
        return True
    return False


def take_over_here(
    session: ResumableSession,
    context: SessionContext,
    identity: Identity,
    resume: messages.Resume,
    also_allowed: set[str] | None = None,
) -> ResumableSession | None:
    """Take over the session the client had, if it is here, the same user's and still whole; all or nothing.
    Returns the session taken over, whose leftover topics the caller releases; None if there is none. Its
    topics are kept if the grants allow them or they are in `also_allowed` (the subscribe proxy said yes).

    Runs without awaiting: no event can slip between the replay and the live ones that follow it."""
    found = context.directory.find(resume.session)
    if found is None:
        return None  # unknown here: a fresh session
    # The directory holds sessions and adopted sessions only, both resumable (an isinstance check against the
    # protocol cost more than the rest of the take-over).
    old = cast("ResumableSession", found)
    if old is session or old.user != identity.user:
        return None  # unknown here, or someone else's: a fresh session, and nothing of theirs is shown
    replay = old.frames_after(resume.received)
    if replay is None:
        if old.parked:
            context.directory.end(found)  # the client can never get it back whole
        return None
    if old.parked:
        # A parked session holds no slot: a resume refused for the user's connection limit (4502) leaves it
        # parked, for a later resume once one of the user's connections closes.
        if not session.admit(identity):
            return None
        old.hand_over()
    else:
        old.hand_over()  # gives back the slot of the connection it replaces (a half-open one, say)
        if not session.admit(identity):
            return old  # closed with 4502; the old session's topics are released all the same
    extra = also_allowed or set()
    kept = {topic for topic in old.topics if identity.grants.allows(topic) or topic in extra}
    hub = context.hub
    for topic in kept:
        hub.transfer(old, session, topic)
    old.topics -= kept  # what the new token no longer grants, released after the welcome
    session.topics = kept
    session.history = _history(context, sent=resume.received)
    personal = identity.grants.personal_topic
    topics = [personal, *sorted(kept - {personal})]
    session.go_live(identity, topics, recovered=True, dropped=sorted(old.topics))
    for frame in replay:
        if frame.topic in kept:
            session.offer(frame)
    session.log.info("session_resumed", replayed=len(replay), received=resume.received)
    return old


async def resume_from_another_instance(
    session: ResumableSession,
    context: SessionContext,
    remote: RemoteSessions,
    identity: Identity,
    resume: messages.Resume,
    ask_application: AskApplication | None = None,
) -> None:
    """Resume a session another instance holds: bind its topics first (this session keeps their events from
    the bind on), then take its events after the client's count, then merge both by event id."""
    # Signed in from here on (its token is verified): while it waits for the holder it holds one of the user's
    # connection slots, not one of the anonymous ones that every other client's sign-in needs.
    if not session.admit(identity):
        return
    held = await remote.topics_of(resume.session, identity.user)
    if not session.awaiting_auth:
        return
    personal = identity.grants.personal_topic
    not_granted = [topic for topic in held or () if not identity.grants.allows(topic)]
    also_allowed = await ask_application(identity.user, not_granted) if ask_application and not_granted else set()
    if not session.awaiting_auth:
        return
    granted = {topic for topic in held or () if identity.grants.allows(topic) or topic in also_allowed} - {personal}
    others = sorted(topic for topic in granted if context.budgets.hold(identity.user, topic))
    dropped = sorted(set(held or ()) - {personal} - set(others))
    try:
        for topic in [personal, *others]:
            session.topics.add(topic)
            await context.hub.subscribe(session, topic)
    except BrokerUnavailable as error:
        session.topics.discard(topic)
        session.log.warning("resume_topics_unavailable", error=str(error))
        session.close(closecodes.TRY_AGAIN_LATER)
        return
    if not session.awaiting_auth:
        return
    handed = await remote.take(resume.session, identity.user, resume.received) if held is not None else None
    if not session.awaiting_auth:
        return
    collected = session.history.after(0)  # what reached this session since its binds
    if handed is None or collected is None:
        # Said where it failed: the holder did not know the session (or was gone), or did not hand it over whole.
        session.log.info(
            "resume_not_recovered",
            resumed_session=resume.session,
            holder=remote.holder(resume.session),
            failed_at="describe" if held is None else "hand_over" if handed is None else "too_many_events",
        )
        await start_fresh_after_failed_resume(session, context, identity, personal, collected or [])
        return
    # Sent once each: what the client had, or gets in the replay, is not sent again from what arrived here.
    already = {frame.event_id for frame in handed.frames} | handed.delivered
    session.history = _history(context, sent=resume.received)
    session.go_live(identity, [personal, *others], recovered=True, dropped=dropped)
    live = set(session.topics)
    for frame in handed.frames:
        if frame.topic in live:
            session.offer(frame)
    for frame in collected:
        if frame.event_id not in already:
            session.offer(frame)
    # An event of the replay may also be on its way through this instance's queue, behind others (a busy
    # instance is seconds behind it): it is dropped when it comes, until this instance has caught up.
    session.skip_late_repeats(frozenset(event_id for event_id in already if event_id))
    context.hub.when_caught_up(lambda: session.skip_late_repeats(None), context.settings.resume_timeout_s)
    session.log.info("session_resumed_from_another_instance", replayed=len(handed.frames), received=resume.received)


async def start_fresh_after_failed_resume(
    session: ResumableSession, context: SessionContext, identity: Identity, personal: str, collected: list[Frame]
) -> None:
    """The other instance could not hand the session over whole: a fresh session with the personal topic."""
    for topic in tuple(session.topics - {personal}):
        session.topics.discard(topic)
        context.budgets.release(identity.user, topic)
        await context.hub.unsubscribe(session, topic)
    if not session.awaiting_auth:
        return
    session.history = _history(context)
    session.go_live(identity, [personal], recovered=False)
    for frame in collected:
        if frame.topic == personal:
            session.offer(frame)


def _history(context: SessionContext, *, sent: int = 0) -> History:
    """A new, empty history; `sent` is the count of events the client already has."""
    return History.from_settings(context.settings, sent=sent)
