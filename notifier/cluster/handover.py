"""Session hand-over between instances: a client that resumes on an instance that does not hold its session
gets it from the instance that does, over the control plane.

The new instance first asks the holder which topics the session holds (`session.describe`), binds them
(events from the bind on are kept by the new session), then asks for the events after the client's count
(`session.hand_over`); the holder answers with them and lets go of the session. The new instance merges:
handed-over events first, then the ones it received itself that were not among them (same event id).

A rolling deploy moves every session of an instance at once, so requests go in batches: the requests of one
kind to one holder that wait while earlier ones are on their way go as one command (`session.describe_batch`,
`session.hand_over_batch`), a few batches in flight per holder. A holder of an earlier release, which does not
announce the batch kinds, is asked one session at a time. Every request, waiting included, is bounded by
NOTIFIER_RESUME_TIMEOUT_S; past it the session is not resumed (the client gets `recovered: false`).

A stopping instance gives its still-parked sessions to one peer (`session.adopt_batch`) and then tells every
instance (`session.moved`). Until that news has reached everyone, it answers a request for a session it gave
away with where it went (`moved`), and the asker asks there. An instance that started after the news asks
every instance which one adopted them (`session.where`) the first time a client of the stopped one comes back.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from notifier.broker import BrokerUnavailable
from notifier.cluster.codec import BadControlMessage, CommandResult
from notifier.cluster.control import ControlPlane
from notifier.connection.adopted import AdoptedSession, ParkedSession
from notifier.connection.directory import SessionDirectory
from notifier.connection.resume import Handed
from notifier.formats.wire import Frame

log = structlog.get_logger("notifier.handover")

DESCRIBE = "session.describe"
HAND_OVER = "session.hand_over"
DESCRIBE_BATCH = "session.describe_batch"
HAND_OVER_BATCH = "session.hand_over_batch"
ADOPT_BATCH = "session.adopt_batch"
MOVED = "session.moved"
WHERE = "session.where"

# Stopped instances whose sessions a peer adopted, remembered for the resume window, at most this many.
MAX_MOVED = 1024
# Adopters followed from the instance that named a session to the one holding it now.
MAX_HOPS = 4
# How long the outcome of a search for a stopped instance's adopter (`session.where`) stands.
SEARCH_STANDS_S = 2.0

# A hand-over larger than this is refused (the client gets `recovered: false`): it travels as one message. A
# batch's reply holds at most this much too; the sessions past it are answered `deferred` and asked again.
MAX_HANDOVER_BYTES = 16 * 1024 * 1024
# The ids of the last events a client had received, sent with its session: enough to cover the seconds an event
# can take to reach a busy new instance after the old one delivered it.
DELIVERED_IDS = 128
# Sessions in one batched request, and batched requests of one kind in flight to one holder at once.
MAX_BATCH = 256
BATCHES_IN_FLIGHT = 4
# One-session requests (to a holder of an earlier release) in flight at once; the rest wait their turn, within
# their own time bound, rather than overrun the control plane's bound on pending requests.
MAX_REQUESTS_IN_FLIGHT = 200


CaughtUp = Callable[[float], Awaitable[None]]
"""Returns once every event routed to this instance before the call reached its sessions (Hub.caught_up)."""

Adopt = Callable[[list[ParkedSession]], Awaitable[int]]
"""Adopt parked sessions from their stopping holder; returns how many were adopted."""


class _Waiting:
    """One session's request waiting for a batch: its arguments, the answer to come, and its deadline."""

    __slots__ = ("answer", "args", "deadline")

    def __init__(self, args: dict[str, Any], answer: asyncio.Future[CommandResult], deadline: float) -> None:
        self.args = args
        self.answer = answer
        self.deadline = deadline


class _Outbox:
    """The requests of one batch kind to one holder that wait to go out, and how many senders serve them."""

    __slots__ = ("senders", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[_Waiting] = deque()
        self.senders = 0


class HeldSession(Protocol):
    """A session as the holder sees it."""

    @property
    def user(self) -> str | None: ...

    @property
    def topics(self) -> set[str]: ...

    def frames_after(self, received: int) -> list[Frame] | None: ...

    def delivered_ids(self, received: int, limit: int) -> list[str]: ...

    def held_frames(self) -> tuple[list[Frame], int] | None:
        """Every event frame held, and how many were handed to the session in all."""

    def hand_over_to_another_instance(self) -> None:
        """Let go of the session: it is someone else's now, and what it holds is released."""


class SessionHandOver:
    """Both sides of a hand-over: asking another instance for a session, and answering for our own."""

    def __init__(
        self, control: ControlPlane, directory: SessionDirectory, caught_up: CaughtUp, *, timeout_s: float
    ) -> None:
        self._control = control
        self._directory = directory
        self._caught_up = caught_up
        self._timeout_s = timeout_s
        self._in_flight = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        self._outboxes: dict[tuple[str, str], _Outbox] = {}
        self._senders: set[asyncio.Task[None]] = set()
        # Requests sent to take sessions over, and the sessions they asked for, by command kind (/metrics).
        self.requests_sent: Counter[str] = Counter()
        self.sessions_asked: Counter[str] = Counter()
        # Stopped instance -> the peers that adopted its sessions, each session by adopter_of.
        self._moved: dict[str, tuple[str, ...]] = {}
        # Stopping: the parked sessions given to a peer to adopt (session id -> peer); as many as were parked.
        self._given_to: dict[str, str] = {}
        # Stopped instances whose parked sessions were adopted here (insertion-ordered, at most MAX_MOVED).
        self._adopted_from: dict[str, tuple[str, ...]] = {}  # -> the peers that adopted its sessions
        self._finding: dict[str, asyncio.Future[None]] = {}  # gone holder -> the search for its adopter
        self.adopt: Adopt | None = None
        """Adopts sessions of a stopping instance here; set by the node (it needs the session context)."""
        control.on(DESCRIBE, self._describe)
        control.on(HAND_OVER, self._hand_over)
        control.on(DESCRIBE_BATCH, self._describe_batch)
        control.on(HAND_OVER_BATCH, self._hand_over_batch)
        control.on(ADOPT_BATCH, self._adopt_batch)
        control.on(MOVED, self._on_moved)
        control.on(WHERE, self._where)

    def holder(self, session_id: str) -> str | None:
        """The other instance that holds `session_id`, or None when it names this one (or none). The sessions of
        an instance that stopped are with the peer that adopted them."""
        holder = self._where_held(session_id)
        if not holder or holder == self._directory.instance_id:
            return None
        return holder

    def _where_held(self, session_id: str) -> str:
        """The instance that holds `session_id` as far as this one knows: the one that named it, or, if that one
        stopped, its adopter, or the adopter's adopter if that one stopped in turn (a rolling update can make
        an old instance adopt sessions just before its own turn comes)."""
        holder = self._directory.holder_of(session_id)
        for _ in range(MAX_HOPS):
            adopters = self._moved.get(holder)
            if not adopters:
                break
            holder = adopter_of(session_id, adopters)
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
        holder, reply = await self._ask_holder(
            session_id, DESCRIBE, DESCRIBE_BATCH, {"session": session_id, "user": user}
        )
        if not reply or not reply.get("found"):
            return None
        topics = reply.get("topics")
        if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
            log.warning("handover_bad_reply", holder=holder, kind=DESCRIBE)
            return None
        return topics

    async def take(self, session_id: str, user: str, received: int | None) -> Handed | None:
        """The session's event frames after the `received`-th, and the ids of the last ones before; the holder
        lets go of it. None if it could not be had whole."""
        args = {"session": session_id, "user": user, "received": received}
        holder, reply = await self._ask_holder(session_id, HAND_OVER, HAND_OVER_BATCH, args)
        if not reply or not reply.get("found"):
            return None
        try:
            frames = [Frame(item["payload"].encode(), item["topic"], item["id"]) for item in reply["frames"]]
            delivered = reply.get("delivered", [])  # absent from a holder of an earlier release
            if not isinstance(delivered, list) or not all(isinstance(item, str) for item in delivered):
                raise TypeError("delivered is not a list of ids")
            sent = reply.get("sent")
            return Handed(frames, frozenset(delivered), sent if isinstance(sent, int) else None)
        except (KeyError, TypeError, AttributeError):
            log.warning("handover_bad_reply", holder=holder, kind=HAND_OVER)
            return None

    async def _ask_holder(
        self, session_id: str, kind: str, batch_kind: str, args: dict[str, Any]
    ) -> tuple[str | None, CommandResult]:
        """The session's holder and its answer. A stopping holder that already gave its parked sessions to a
        peer says so (`moved`) until every instance has heard it: the request then goes once more, to that peer."""
        holder = await self._live_holder(session_id)
        if holder is None or not self._alive(holder):
            return holder, None
        reply = await self._ask(holder, kind, batch_kind, args)
        if reply is None and not self._alive(holder):
            # It left while it was asked (its goodbye ends the wait): its sessions are with the peers that adopted
            # them, which its `session.moved` named, or which are searched for now.
            adopter = await self._live_holder(session_id)
            if adopter is None or adopter == holder or not self._alive(adopter):
                return holder, None
            holder, reply = adopter, await self._ask(adopter, kind, batch_kind, args)
        moved = reply.get("moved") if isinstance(reply, dict) and not reply.get("found") else None
        if not isinstance(moved, str) or moved in (holder, self._directory.instance_id) or not self._alive(moved):
            return holder, reply
        return moved, await self._ask(moved, kind, batch_kind, args)

    async def _live_holder(self, session_id: str) -> str | None:
        """The session's holder; when the one this instance knows of is gone, the adopter its peers know of,
        followed for as long as that one is gone too (at most MAX_HOPS searches)."""
        holder = self.holder(session_id)
        for _ in range(MAX_HOPS):
            if holder is None or self._alive(holder):
                break
            await self._find_adopter(holder)
            found = self.holder(session_id)
            if found == holder:
                break
            holder = found
        return holder

    async def _find_adopter(self, gone: str) -> None:
        """Learn which peer adopted the sessions of `gone`, an instance that stopped before this one heard its
        `session.moved` (this one started later): every instance is asked, and an answer is remembered as if
        `session.moved` had said it. One search per gone instance at a time, and its outcome stands for a few
        seconds: a crashed instance's returning clients do not each ask everyone."""
        finding = self._finding.get(gone)
        if finding is None:
            finding = self._finding[gone] = asyncio.ensure_future(self._ask_where(gone))
            loop = asyncio.get_running_loop()
            finding.add_done_callback(lambda _: loop.call_later(SEARCH_STANDS_S, self._finding.pop, gone, None))
        await asyncio.shield(finding)

    async def _ask_where(self, gone: str) -> None:
        self.requests_sent[WHERE] += 1
        try:
            gathered = await self._control.gather(WHERE, {"holder": gone}, timeout=self._timeout_s)
        except BrokerUnavailable as error:
            log.info("handover_request_not_sent", holder="all", kind=WHERE, error=str(error))
            return
        for reply in gathered.replies.values():
            adopters = _peers(reply.get("adopters")) if isinstance(reply, dict) else None
            if adopters:
                self._remember_moved(gone, adopters)
                return

    async def _ask(self, holder: str, kind: str, batch_kind: str, args: dict[str, Any]) -> CommandResult:
        """The holder's answer for one session, or None when there is none within NOTIFIER_RESUME_TIMEOUT_S,
        waiting for a turn included (or the request could not be sent)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        if not self._control.runs(holder, batch_kind):
            return await self._ask_alone(holder, kind, args, deadline)
        answer: asyncio.Future[CommandResult] = loop.create_future()
        outbox = self._outboxes.get((holder, batch_kind))
        if outbox is None:
            outbox = self._outboxes[(holder, batch_kind)] = _Outbox()
        outbox.waiting.append(_Waiting(args, answer, deadline))
        if outbox.senders < BATCHES_IN_FLIGHT:
            outbox.senders += 1
            sender = asyncio.create_task(self._send_batches(holder, batch_kind, outbox))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        try:
            async with asyncio.timeout_at(deadline):
                return await answer
        except TimeoutError:
            log.info("handover_request_timed_out", holder=holder, kind=batch_kind)
            return None
        finally:
            answer.cancel()  # a request not yet sent is then never sent

    async def _ask_alone(self, holder: str, kind: str, args: dict[str, Any], deadline: float) -> CommandResult:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline), self._in_flight:
                self._count_request(kind, 1)
                return await self._control.ask(holder, kind, args, timeout=max(0.0, deadline - loop.time()))
        except TimeoutError:
            log.info("handover_request_timed_out", holder=holder, kind=kind)
        except BrokerUnavailable as error:
            log.info("handover_request_not_sent", holder=holder, kind=kind, error=str(error))
        return None

    async def _send_batches(self, holder: str, kind: str, outbox: _Outbox) -> None:
        """Send the waiting requests as batches, one at a time, until none waits."""
        loop = asyncio.get_running_loop()
        try:
            while outbox.waiting:
                batch: list[_Waiting] = []
                while outbox.waiting and len(batch) < MAX_BATCH:
                    waiting = outbox.waiting.popleft()
                    if not waiting.answer.done():  # its asker gave up meanwhile
                        batch.append(waiting)
                if not batch:
                    continue
                timeout_s = max(waiting.deadline for waiting in batch) - loop.time()
                self._count_request(kind, len(batch))
                try:
                    reply = await self._control.ask(
                        holder, kind, {"sessions": [waiting.args for waiting in batch]}, timeout=max(0.0, timeout_s)
                    )
                except BrokerUnavailable as error:
                    log.info("handover_request_not_sent", holder=holder, kind=kind, error=str(error))
                    reply = None
                results = reply.get("results") if isinstance(reply, dict) else None
                if not isinstance(results, list) or len(results) != len(batch):
                    if reply is not None:
                        log.warning("handover_bad_reply", holder=holder, kind=kind)
                    results = [None] * len(batch)
                for waiting, result in zip(batch, results, strict=True):
                    if isinstance(result, dict) and result.get("deferred") is True:
                        outbox.waiting.append(waiting)  # past the reply's size bound: asked again
                    elif not waiting.answer.done():
                        waiting.answer.set_result(result if isinstance(result, dict) else None)
        finally:
            outbox.senders -= 1
            if not outbox.senders and not outbox.waiting:
                self._outboxes.pop((holder, kind), None)

    def _count_request(self, kind: str, sessions: int) -> None:
        self.requests_sent[kind] += 1
        self.sessions_asked[kind] += sessions

    # A stopping instance's parked sessions, adopted by a peer.

    def adopters(self) -> tuple[str, ...]:
        """The live peers that adopt sessions (one of an earlier release does not), in one order every instance
        shares: a stopping instance's parked sessions are spread over them by `adopter_of`."""
        live = self._control.live_instances() or set()
        return tuple(
            sorted(peer for peer in live - {self._directory.instance_id} if self._control.runs(peer, ADOPT_BATCH))
        )

    async def push_parked(self, adopters: tuple[str, ...], sessions: list[ParkedSession], deadline: float) -> None:
        """Ask each of `adopters` to adopt its share of these parked sessions; it takes each over as a resume
        would, so they leave this instance as it gets them. Their topics go with them: a parked session has no
        connection to change them, and the adopter binds them without asking first. Bounded by `deadline` (the
        loop's clock)."""
        loop = asyncio.get_running_loop()
        shares: dict[str, list[ParkedSession]] = {}
        for parked in sessions:
            peer = adopter_of(parked[0], adopters)
            shares.setdefault(peer, []).append(parked)
            # From now on a request for it that finds it no longer here is sent on to its adopter.
            self._given_to[parked[0]] = peer

        async def push(peer: str, batch: list[ParkedSession]) -> None:
            args = {
                "holder": self._directory.instance_id,
                "adopters": list(adopters),
                "sessions": [{"session": s, "user": u, "topics": t} for s, u, t in batch],
            }
            try:
                await self._control.ask(peer, ADOPT_BATCH, args, timeout=max(0.0, deadline - loop.time()))
            except BrokerUnavailable as error:
                log.info("handover_request_not_sent", holder=peer, kind=ADOPT_BATCH, error=str(error))

        await asyncio.gather(
            *(
                push(peer, share[index : index + MAX_BATCH])
                for peer, share in shares.items()
                for index in range(0, len(share), MAX_BATCH)
            )
        )

    async def announce_moved(self, adopters: tuple[str, ...]) -> None:
        """Tell every instance that a client of ours resumes with its session's adopter from now on."""
        # `to` for instances of an earlier release, which know one adopter only.
        args = {"from": self._directory.instance_id, "to": adopters[0], "adopters": list(adopters)}
        try:
            await self._control.broadcast(MOVED, args)
        except BrokerUnavailable as error:
            log.info("handover_request_not_sent", holder="all", kind=MOVED, error=str(error))

    async def _adopt_batch(self, args: dict[str, Any]) -> CommandResult:
        holder = args.get("holder")
        items = _batch_items(args)
        if not isinstance(holder, str) or self.adopt is None:
            return {"adopted": 0}
        parked = [
            (item["session"], item["user"], _topics(item.get("topics")))
            for item in items
            if isinstance(item.get("session"), str)
            and isinstance(item.get("user"), str)
            and self._where_held(item["session"]) == holder  # its own, or one it adopted
        ]
        self._adopted_from[holder] = _peers(args.get("adopters")) or (self._directory.instance_id,)
        if len(self._adopted_from) > MAX_MOVED:
            self._adopted_from.pop(next(iter(self._adopted_from)))
        adopted = await self.adopt(parked)
        log.info("sessions_adopted", holder=holder, adopted=adopted, asked=len(items))
        return {"adopted": adopted}

    async def _on_moved(self, args: dict[str, Any]) -> CommandResult:
        moved_from = args.get("from")
        adopters = _peers(args.get("adopters")) or _peers([args.get("to")])
        if isinstance(moved_from, str) and adopters:
            self._remember_moved(moved_from, adopters)
        return None

    async def _where(self, args: dict[str, Any]) -> CommandResult:
        holder = args.get("holder")
        if not isinstance(holder, str):
            return None
        if holder in self._adopted_from:
            return {"adopted_by": self._directory.instance_id, "adopters": list(self._adopted_from[holder])}
        if holder in self._moved:  # heard from it as it stopped: an answer for those that started later
            return {"adopters": list(self._moved[holder])}
        return None

    def _remember_moved(self, moved_from: str, adopters: tuple[str, ...]) -> None:
        if moved_from == self._directory.instance_id or moved_from in adopters:
            return
        if moved_from not in self._moved and len(self._moved) >= MAX_MOVED:
            self._moved.pop(next(iter(self._moved)))
        self._moved[moved_from] = adopters

    # The holding side.

    def _held(self, args: dict[str, Any]) -> HeldSession | None:
        session_id, user = args.get("session"), args.get("user")
        if not isinstance(session_id, str) or not isinstance(user, str):
            return None
        session = self._directory.find(session_id)
        if session is None or getattr(session, "user", None) != user:
            return None  # unknown here, or another user's: the same answer, so nothing leaks
        if isinstance(session, AdoptedSession) and not session.adopted.done():
            return None  # its adoption is not over in time: not all of it is here
        return session  # type: ignore[return-value]

    async def _describe(self, args: dict[str, Any]) -> CommandResult:
        await self._adoptions_settled([args])
        return self._describe_one(args)

    async def _hand_over(self, args: dict[str, Any]) -> CommandResult:
        if not await self._ready_to_hand_over([args]):
            return {"found": False}
        result, _ = self._hand_over_one(args, MAX_HANDOVER_BYTES)
        return result

    async def _describe_batch(self, args: dict[str, Any]) -> CommandResult:
        items = _batch_items(args)
        await self._adoptions_settled(items)
        return {"results": [self._describe_one(item) for item in items]}

    async def _hand_over_batch(self, args: dict[str, Any]) -> CommandResult:
        """Hand every session of the batch over, within one reply's size bound: the ones past it stay here,
        answered `deferred` (the asker asks again)."""
        items = _batch_items(args)
        if not await self._ready_to_hand_over(items):
            return {"results": [{"found": False} for _ in items]}
        results: list[dict[str, Any]] = []
        room = MAX_HANDOVER_BYTES
        for item in items:
            result, size = self._hand_over_one(item, room)
            results.append(result)
            room -= size
        handed = sum(1 for result in results if result.get("found"))
        log.info("handover_batch_answered", sessions=handed, asked=len(results))
        return {"results": results}

    async def _adoptions_settled(self, items: list[dict[str, Any]]) -> None:
        """Wait (within NOTIFIER_RESUME_TIMEOUT_S) for the adoptions under way of the sessions asked for: until
        one is over, its topics and events are not all here yet, and describing or handing it over then would
        give the asker a part of it. One whose adoption failed is gone by then (not found)."""
        adopting = [
            session.adopted
            for item in items
            if isinstance(session := self._directory.find(str(item.get("session"))), AdoptedSession)
            and not session.adopted.done()
        ]
        if adopting:
            await asyncio.wait(adopting, timeout=self._timeout_s)

    async def _ready_to_hand_over(self, items: list[dict[str, Any]]) -> bool:
        """Before sessions held here are handed over: wait for their adoptions under way, then until every event
        routed here before the asker's binds reached them (an event still in this instance's queue would reach
        a session already let go of, and be lost). False if that is not known in time: the sessions are not
        handed over then."""
        await self._adoptions_settled(items)
        if not any(self._held(item) for item in items):
            return True
        try:
            await self._caught_up(self._timeout_s)
        except BrokerUnavailable as error:
            log.warning("handover_not_caught_up", sessions=len(items), error=str(error))
            return False
        return True

    def _not_here(self, args: dict[str, Any]) -> dict[str, Any]:
        """The answer for a session not held here: with the peer it was given to, if this stopping instance
        gave it away (the asker may not have heard `session.moved` yet)."""
        session_id = args.get("session")
        peer = self._given_to.get(session_id) if isinstance(session_id, str) else None
        return {"found": False, "moved": peer} if peer is not None else {"found": False}

    def _describe_one(self, args: dict[str, Any]) -> dict[str, Any]:
        session = self._held(args)
        if session is None:
            return self._not_here(args)
        return {"found": True, "topics": sorted(session.topics)}

    def _hand_over_one(self, args: dict[str, Any], room: int) -> tuple[dict[str, Any], int]:
        """The session's events after the client's count, and their size; it is let go of once they are in the
        answer. Past `room` bytes (but within MAX_HANDOVER_BYTES) it is `deferred` and kept."""
        session = self._held(args)
        received = args.get("received")
        if isinstance(received, bool) or not isinstance(received, int | None):
            return {"found": False}, 0
        if session is None:
            return self._not_here(args), 0
        sent: int | None = None
        frames: list[Frame] | None
        if received is None:  # everything held: a peer adopts the session before its client is back
            held = session.held_frames()
            if held is None:
                return {"found": False}, 0
            frames, sent = held
            received = sent - len(frames)
        else:
            frames = session.frames_after(received)
        size = sum(len(frame.payload) for frame in frames) if frames is not None else 0
        if frames is None or size > MAX_HANDOVER_BYTES:
            return {"found": False}, 0
        if size > room:
            return {"deferred": True}, 0
        items = [{"topic": frame.topic, "id": frame.event_id, "payload": frame.payload.decode()} for frame in frames]
        delivered = session.delivered_ids(received, DELIVERED_IDS)
        session.hand_over_to_another_instance()
        log.debug("session_handed_over", events=len(items))
        answer: dict[str, Any] = {"found": True, "frames": items, "delivered": delivered}
        if sent is not None:
            answer["sent"] = sent
        return answer, size + sum(map(len, delivered))


def _batch_items(args: dict[str, Any]) -> list[dict[str, Any]]:
    sessions = args.get("sessions")
    if not isinstance(sessions, list) or len(sessions) > MAX_BATCH:
        raise BadControlMessage(f"a batch is a list of at most {MAX_BATCH} sessions")
    return [item if isinstance(item, dict) else {} for item in sessions]


def adopter_of(session_id: str, adopters: tuple[str, ...]) -> str:
    """Which of a stopped instance's adopters has `session_id`: the same answer on every instance."""
    return adopters[zlib.crc32(session_id.encode()) % len(adopters)]


def _topics(value: object) -> list[str] | None:
    """The topics of a pushed session, or None when they are absent or not a list of strings (then they are
    asked for, as from a holder of an earlier release)."""
    if not isinstance(value, list) or not all(isinstance(topic, str) for topic in value):
        return None
    return value


def _peers(value: object) -> tuple[str, ...]:
    """A list of instance ids from a message, or () when it is not one (bounded as the instances remembered)."""
    if not isinstance(value, list) or not value or len(value) > MAX_MOVED:
        return ()
    if not all(isinstance(peer, str) and peer for peer in value):
        return ()
    return tuple(value)
