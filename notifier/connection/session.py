"""One client session's protocol state machine: awaiting auth -> open -> closing -> parked or ended, and the
handlers of its requests; its subscriptions, its recent event frames (kept for a resume) and its token's
expiry. Taking over a session on resume is notifier/connection/resume.py, through this class's public methods.
The write path (outbox and sender) and every collaborator are passed in, so the state machine runs as well
against a fake socket and the in-memory broker as against uvicorn and RabbitMQ.

It is the same for either transport. A WebSocket's client frames come through the connection's own `receive`;
an HTTP stream signs in with its request (`run` is given the sign-in) and its client frames come as commands
(`feed`), while its `receive` only says when the connection is gone."""

from __future__ import annotations

import asyncio
import collections
import enum
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
from starlette.websockets import WebSocketDisconnect

from notifier.broker import BrokerUnavailable
from notifier.connection.auth import Identity, TokenRejected
from notifier.connection.directory import SessionDirectory
from notifier.connection.history import History
from notifier.connection.hub import Hub
from notifier.connection.outbox import Outbox
from notifier.connection.proxy import ApplicationProxies, ClientRequest, ProxyRefused, ProxyUnavailable
from notifier.connection.resume import RemoteSessions, resume_session
from notifier.connection.senders import KEEP_ALIVE, Sender
from notifier.formats import closecodes, messages
from notifier.formats.closecodes import CloseReason
from notifier.formats.topics import InvalidTopic, validate_topic
from notifier.formats.wire import Frame
from notifier.limits.admission import Admission
from notifier.limits.budgets import UserBudgets
from notifier.limits.tokenbucket import RateLimiter
from notifier.settings import Settings
from notifier.stats import Stats

log = structlog.get_logger("notifier.session")

# How long a closing connection may take to finish its close handshake before it is dropped.
CLOSE_GRACE_S = 5.0
# What `receive` raises once the connection is gone.
_RECEIVE_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    OPEN = "open"
    CLOSING = "closing"
    PARKED = "parked"  # the connection ended without a goodbye: events keep collecting for a resume
    HANDED_OVER = "handed_over"  # a new connection resumed it; it holds nothing any more
    ENDED = "ended"


# A client that closes with this code said goodbye: its session ends instead of waiting for a resume.
GOODBYE_CODE = closecodes.GOODBYE_CODE

Fed = Literal["accepted", "too_big", "rate_limited", "closed"]
"""What became of a client frame given to `Session.feed`."""


class Verifier(Protocol):
    async def verify(self, token: object) -> Identity:
        """The identity a token speaks for, or TokenRejected saying why not."""


@dataclass(frozen=True)
class SessionContext:
    """What a session needs from its instance, and nothing more."""

    settings: Settings
    hub: Hub
    verifier: Verifier
    admission: Admission
    budgets: UserBudgets
    stats: Stats
    directory: SessionDirectory
    remote_sessions: RemoteSessions | None
    """How to resume a session another instance holds; None with a single instance."""
    on_finished: Callable[[Session], None]
    """Called once, when the session's connection is over (it may stay parked after that)."""
    proxies: ApplicationProxies | None = None
    """The application's connect and subscribe proxies; None when neither is configured."""


class Session:
    """Serves one WebSocket connection from handshake to close.

    Thousands of these sit idle at once, so an idle one holds no task and no timer of its own beyond its
    token's expiry, and its history and send queue are made when first needed."""

    __slots__ = (
        "__weakref__",
        "_asked_to_resume",
        "_client_close_code",
        "_close_reason",
        "_command_task",
        "_commands",
        "_context",
        "_holds_user_slot",
        "_late_repeats",
        "_outbox",
        "_rate",
        "_receive",
        "_sender",
        "_sent_when_parked",
        "_settings",
        "_timer",
        "client_request",
        "connection_id",
        "history",
        "identity",
        "session_id",
        "state",
        "topics",
    )

    def __init__(
        self,
        receive: Receive,
        sender: Sender,
        context: SessionContext,
        frame_budget: RateLimiter | None = None,
        client_request: ClientRequest | None = None,
    ) -> None:
        self._receive = receive
        self._sender = sender
        self._context = context
        self._settings = settings = context.settings
        self.connection_id = secrets.token_hex(8)
        # What the application's proxies are told of this connection (its handshake's allow-listed headers,
        # origin and address); kept only when a proxy is configured.
        self.client_request = client_request
        self.state = State.AWAITING_AUTH
        self.identity: Identity | None = None
        self.session_id: str | None = None  # given with the welcome
        self.topics: set[str] = set()
        self.history = History.from_settings(settings)
        self._holds_user_slot = False
        self._sent_when_parked = 0
        self._asked_to_resume = False  # its sign-in named a session to resume (counted by outcome)
        # Resumed from another instance: the ids of the events it got in the replay, which may still arrive here
        # through this instance's queue; dropped once this instance has caught up with its queue.
        self._late_repeats: frozenset[str] | None = None
        self._close_reason: CloseReason | None = None
        self._client_close_code: int | None = None
        self._outbox = Outbox(sender, settings.send_queue_size, self._on_outbox_overflow)
        # At most one deadline at a time: the auth timeout, then the token's expiry, then the close's grace.
        self._timer: asyncio.TimerHandle | None = None
        # Under `notifier serve` the connection's protocol owns the frame budget, so its pings spend it too.
        self._rate = frame_budget or RateLimiter(settings.client_frames_per_s, settings.client_frames_burst)
        # Client frames given as commands (an HTTP stream's), and the task that runs them while any wait.
        self._commands: collections.deque[bytes] | None = None
        self._command_task: asyncio.Task[None] | None = None

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """The logger with this connection's id and user (and `transport="sse"` for an HTTP stream); bound when
        something is logged, not held."""
        bound = log.bind(conn=self.connection_id)
        if self._sender.transport != "websocket":
            bound = bound.bind(transport=self._sender.transport)
        if self.identity is None:
            return bound  # type: ignore[no-any-return]
        return bound.bind(user=self.identity.user)  # type: ignore[no-any-return]

    @property
    def transport(self) -> str:
        """ "websocket" or "sse"."""
        return self._sender.transport

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity else None

    @property
    def write_path(self) -> str:
        return self._sender.name

    @property
    def awaiting_auth(self) -> bool:
        """The connection has not signed in yet (and is not closing)."""
        return self.state is State.AWAITING_AUTH

    @property
    def parked(self) -> bool:
        """The connection ended without a goodbye: the session keeps collecting events for a resume."""
        return self.state is State.PARKED

    # The hub's side: never waits.

    def offer(self, frame: Frame) -> None:
        """Take one event frame from the hub: send it now if the socket takes it, else queue it (a client too slow
        to take it is closed); keep it for a resume; while parked, only keep it."""
        repeats = self._late_repeats
        if repeats is not None and frame.event_id in repeats:
            return  # it had this one in the replay of its resume
        state = self.state
        if state is State.OPEN:
            history = self.history
            if history.keeps:  # with resume off, nothing is kept once the welcome went out
                history.record(frame)
            self._outbox.offer(frame)
        elif state is State.CLOSING or state is State.AWAITING_AUTH:
            self.history.record(frame)  # sent after the welcome, or replayed if the session is resumed
        elif state is State.PARKED:
            if self.history.sent - self._sent_when_parked >= self._settings.resume_max_events:
                self.log.info("parked_session_overflowed")
                self._context.directory.end(self)  # it missed more than it can hold: never recoverable
            else:
                self.history.record(frame)

    def skip_late_repeats(self, event_ids: frozenset[str] | None) -> None:
        """Drop these events if they reach the session from now on (None: stop dropping)."""
        self._late_repeats = event_ids or None

    def reply(self, payload: bytes) -> None:
        """Send one of this connection's own messages (welcome, answers, errors)."""
        if self._is_live():
            self._outbox.offer(Frame(payload))

    def close(self, reason: CloseReason, *, drop_pending: bool = False) -> None:
        """Close the connection with `reason`, after sending what is queued unless `drop_pending`."""
        if not self._is_live():
            return
        self.state = State.CLOSING
        self._close_reason = reason
        stats = self._context.stats
        if drop_pending:
            stats.frames_dropped += self._outbox.drop_pending()
        # A client that stopped reading never answers the close, and the reader may be waiting on it.
        self._start_timer(CLOSE_GRACE_S, self._abandon)
        if reason is not closecodes.GOODBYE:  # the client's own choice, not a close of ours
            stats.closes_by_code[reason.code] += 1
            if self._sender.transport == "sse":
                stats.sse_closes_by_code[reason.code] += 1
        if reason is not closecodes.SHUTDOWN:  # the drain logs those once, with their number
            self.log.info("connection_closing", code=reason.code, reason=reason.reason)
        self._outbox.close_after_pending(reason)

    def _on_outbox_overflow(self) -> None:
        self.close(closecodes.SLOW_CLIENT, drop_pending=True)

    def end_by_client(self) -> None:
        """The client said goodbye outside its connection (the HTTP stream's DELETE): the session ends, as after a
        WebSocket close 1000 from the client, instead of parking; the connection is closed after what is queued."""
        self.close(closecodes.GOODBYE)

    def keep_alive(self) -> None:
        """Give the connection its transport's keep-alive (the HTTP stream's heartbeat) unless output waits."""
        if self.state is State.OPEN and not len(self._outbox):
            self._outbox.offer(KEEP_ALIVE)

    # The connection's life.

    async def run(self, sign_in: messages.Auth | None) -> None:
        """Serve the connection until it ends; the caller has checked the origin and accepted. `sign_in` is the
        login that came with the request (a WebSocket's `?token=`, an HTTP stream's token and resume point);
        without one the client has NOTIFIER_AUTH_TIMEOUT_S to send its `auth` frame."""
        admission = self._context.admission
        try:
            if not admission.open_connection():
                self.close(closecodes.SERVER_FULL)
            elif sign_in is not None:
                await self._authenticate(sign_in.token, request_id=sign_in.id, resume=sign_in.resume)
            else:
                self._start_timer(self._settings.auth_timeout_s, closecodes.AUTH_TIMEOUT)
            await self._read_loop()
        finally:
            if self._is_live():
                self.state = State.CLOSING
            self._cancel_timer()
            # The reader ends when the client is gone or did not answer our close in time: either way nothing
            # the writer still holds can reach it. Stop the writer rather than wait on it (this also runs
            # while the event loop shuts down, where every second of waiting delays the exit).
            await self._outbox.stop()
            admission.close_connection()
            if self._command_task is not None:
                # A command half done (a subscribe awaiting its binding) finishes before the session parks or
                # ends, as a WebSocket's frame does before its reader sees the disconnect.
                await asyncio.wait([self._command_task])
            await self._after_connection()

    async def _after_connection(self) -> None:
        """The connection is over: park the session for a resume, or end it."""
        context = self._context
        if self.state is State.HANDED_OVER:
            context.on_finished(self)  # a new connection holds its topics now
        elif self._parkable() and context.directory.parking:
            self.state = State.PARKED
            self._sent_when_parked = self.history.sent
            self._release_user_slot()
            context.on_finished(self)
            context.directory.park(self)
            self.log.info("session_parked")
        else:
            context.directory.forget(self)
            self.state = State.ENDED
            # The connection stops counting first: its unbinds may wait for the broker, and a user who comes
            # straight back must not be refused for a connection that is gone.
            context.on_finished(self)
            await self.release_slot_and_topics()

    def _is_live(self) -> bool:
        return self.state is State.OPEN or self.state is State.AWAITING_AUTH

    def _parkable(self) -> bool:
        if self.session_id is None or self._settings.resume_window_s <= 0:
            return False  # never welcomed, or resume is off
        if self._close_reason is not None:
            return self._close_reason.reconnect
        return self._client_close_code != GOODBYE_CODE

    def expire(self) -> Coroutine[Any, Any, None] | None:
        """The directory ends this parked session: its window passed, it overflowed, or the instance stops."""
        if self.state is not State.PARKED:
            return None
        self.state = State.ENDED
        self.log.info("parked_session_ended")
        return self.release_slot_and_topics()

    def hand_over(self) -> None:
        """A new connection resumes this session: stop holding anything, and drop a connection that still looks
        open (a half-open TCP connection nobody noticed yet)."""
        was = self.state
        self.state = State.HANDED_OVER
        self._context.directory.forget(self)
        self._cancel_timer()
        self._release_user_slot()
        if was is not State.PARKED:
            self._sender.abort()

    def _release_user_slot(self) -> None:
        if self._holds_user_slot and self.identity is not None:
            self._holds_user_slot = False
            self._context.admission.release_user(self.identity.user)

    async def release_slot_and_topics(self) -> None:
        """Give back the user's connection slot, then every topic it still holds."""
        self._release_user_slot()
        hub = self._context.hub
        for topic in tuple(self.topics):
            if self.identity is not None:
                self._context.budgets.release(self.identity.user, topic)
            await hub.unsubscribe(self, topic)
        self.topics.clear()

    async def _read_loop(self) -> None:
        receive = self._receive
        while True:
            if not self._is_live():
                # We sent (or are sending) a close frame: wait a bounded time for the client's answer.
                try:
                    message = await asyncio.wait_for(receive(), CLOSE_GRACE_S)
                except (TimeoutError, *_RECEIVE_ERRORS):
                    return
            else:
                message = await receive()
            if message["type"] == "websocket.disconnect":
                if message.get(closecodes.SERVER_CLOSE_KEY):
                    self._closed_by_websocket_layer(message.get("code"))
                elif "code" in message:  # an HTTP stream's end carries none
                    self._client_close_code = message["code"]
                return
            if not self._is_live():
                continue
            await self._on_message(message)

    def _closed_by_websocket_layer(self, code: int | None) -> None:
        """The WebSocket layer refused a frame and sent the close itself (1009, 1007): the session ends as after
        our own close with that code, and it is counted and logged the same."""
        reason = closecodes.FRAME_FAULTS.get(code or 0)
        if reason is None or self._close_reason is not None:
            return
        was_live = self._is_live()
        self.state = State.CLOSING
        self._close_reason = reason
        self._context.stats.closes_by_code[reason.code] += 1
        if was_live:
            self.log.info("connection_closing", code=reason.code, reason=reason.reason)

    async def _on_message(self, message: MutableMapping[str, Any]) -> None:
        if not self._rate.allow():
            self.close(closecodes.RATE_LIMITED)
            return
        text = message.get("text")
        if text is None:
            self._reply_or_violate(messages.BadMessage("bad_request", "binary frames are not accepted; send JSON text"))
            return
        if len(text) > self._settings.max_frame_bytes or len(text.encode()) > self._settings.max_frame_bytes:
            self.close(closecodes.MESSAGE_TOO_BIG)
            return
        try:
            frame = messages.parse_client_message(text)
        except messages.BadMessage as bad:
            self._reply_or_violate(bad)
            return
        await self._on_request(frame)

    def feed(self, body: bytes) -> Fed:
        """Take one client frame that came as a command (an HTTP stream's POST), to be run after the ones before
        it; its answer goes out on the connection as a WebSocket's would. "too_big" past NOTIFIER_MAX_FRAME_BYTES
        (the connection stays), "rate_limited" past the frame budget or with more than
        NOTIFIER_CLIENT_FRAMES_BURST commands waiting (the connection is closed with 4004), "closed" when the
        connection is not open."""
        if self.state is not State.OPEN:
            return "closed"
        if len(body) > self._settings.max_frame_bytes:
            return "too_big"
        commands = self._commands
        if commands is None:
            commands = self._commands = collections.deque()
        if not self._rate.allow() or len(commands) >= self._settings.client_frames_burst:
            self.close(closecodes.RATE_LIMITED)
            return "rate_limited"
        commands.append(body)
        if self._command_task is None:
            self._command_task = asyncio.get_running_loop().create_task(self._run_commands())
        return "accepted"

    async def _run_commands(self) -> None:
        """Run the commands given to `feed`, in order, one at a time; exists only while some wait."""
        commands = self._commands
        assert commands is not None
        try:
            while commands and self.state is State.OPEN:
                body = commands.popleft()
                try:
                    frame = messages.parse_client_message(body.decode())
                except UnicodeDecodeError:
                    self.reply(messages.error("bad_request", "a frame must be JSON text in UTF-8"))
                    continue
                except messages.BadMessage as bad:
                    self.reply(messages.error(bad.code, bad.message, bad.request_id))
                    continue
                await self._on_request(frame)
        finally:
            commands.clear()
            self._command_task = None

    def _reply_or_violate(self, bad: messages.BadMessage) -> None:
        if self.state is State.AWAITING_AUTH:
            self.close(closecodes.PROTOCOL_VIOLATION)
        else:
            self.reply(messages.error(bad.code, bad.message, bad.request_id))

    async def _on_request(self, frame: messages.ClientMessage) -> None:
        if self.state is State.AWAITING_AUTH:
            if isinstance(frame, messages.Auth):
                await self._authenticate(frame.token, request_id=frame.id, resume=frame.resume)
            else:
                self.close(closecodes.PROTOCOL_VIOLATION)
            return
        if isinstance(frame, messages.Subscribe):
            await self._subscribe(frame)
        elif isinstance(frame, messages.Unsubscribe):
            await self._unsubscribe(frame)
        elif isinstance(frame, messages.Ping):
            self.reply(messages.pong(frame.id))
        elif isinstance(frame, messages.Refresh):
            await self._refresh(frame)
        else:
            self.reply(messages.error("bad_request", "already authenticated; use 'refresh' for a new token", frame.id))

    # Authentication and token lifetime.

    async def _authenticate(
        self, token: str | None, request_id: messages.RequestId, resume: messages.Resume | None = None
    ) -> None:
        self._cancel_timer()  # the auth timeout
        context = self._context
        if token is None:
            found = await self._identify_by_application()
            if found is None:
                return
            identity = found
        else:
            try:
                identity = await context.verifier.verify(token)
            except TokenRejected as rejected:
                self.log.info("auth_rejected", reason=str(rejected))
                self.close(closecodes.TOKEN_EXPIRED if rejected.expired else closecodes.INVALID_TOKEN)
                return
        if self.state is not State.AWAITING_AUTH:
            return  # closed while verifying
        if not context.budgets.spend(identity.user):  # reconnecting does not refill the user's budget
            self.close(closecodes.RATE_LIMITED)
            return
        # A resume that cannot be tried (no such session here or elsewhere) signs in as a fresh session.
        ask = self.allowed_by_application if context.proxies is not None else None
        self._asked_to_resume = resume is not None
        if resume is not None and await resume_session(self, context, identity, resume, ask):
            return
        if not self.admit(identity):
            return
        personal = identity.grants.personal_topic
        try:
            await context.hub.subscribe(self, personal)
        except BrokerUnavailable as error:
            self.log.warning("personal_topic_unavailable", error=str(error))
            self.close(closecodes.TRY_AGAIN_LATER)
            return
        if self.state is not State.AWAITING_AUTH:  # closed while binding (shutdown, for instance)
            await context.hub.unsubscribe(self, personal)
            return
        self.topics.add(personal)
        self.go_live(identity, [personal], recovered=False)
        # Events of the personal topic that arrived between the bind and the welcome follow it.
        for frame in self.history.after(0) or ():
            self._outbox.offer(frame)

    async def _identify_by_application(self) -> Identity | None:
        """An `auth` without a token: ask the connect proxy who this client is. None when the connection was
        closed instead (no connect proxy: 4501; refused: 4504; the application unavailable: 4005)."""
        proxies = self._context.proxies
        if proxies is None or proxies.connect is None:
            self.close(closecodes.PROTOCOL_VIOLATION)  # a token is the only way to sign in
            return None
        request = self.client_request or ClientRequest((), None, None)
        started = time.monotonic()
        try:
            identity = await proxies.identify(request)
        except ProxyRefused as refused:
            self.log.info("connect_proxy_refused", reason=str(refused))
            self.close(closecodes.REFUSED_BY_APPLICATION)
            return None
        except ProxyUnavailable as error:
            took_ms = round((time.monotonic() - started) * 1000)
            self.log.warning("connect_proxy_unavailable", error=str(error), took_ms=took_ms)
            self.close(closecodes.APPLICATION_UNAVAILABLE)
            return None
        return identity

    async def allowed_by_application(self, user: str, topics: list[str]) -> set[str]:
        """Of `topics`, those the subscribe proxy allows `user` (none without a subscribe proxy; a topic the
        application could not answer for is not allowed). Used on resume and refresh."""
        proxies = self._context.proxies
        if proxies is None or proxies.subscribe is None:
            return set()
        request = self.client_request or ClientRequest((), None, None)

        async def ask(topic: str) -> str | None:
            try:
                allowed = await proxies.may_subscribe(user, topic, request)
            except ProxyUnavailable as error:
                self.log.warning("subscribe_proxy_unavailable", topic=topic, error=str(error))
                return None
            return topic if allowed else None

        answers = await asyncio.gather(*(ask(topic) for topic in topics))
        return {topic for topic in answers if topic is not None}

    def admit(self, identity: Identity) -> bool:
        """Take one of the user's connection slots for this session, or close it with 4502 (also used by
        notifier/connection/resume.py)."""
        if not self._context.admission.admit_user(identity.user):
            self.close(closecodes.USER_CONNECTION_LIMIT)
            return False
        self.identity = identity
        self._holds_user_slot = True
        return True

    def go_live(
        self, identity: Identity, topics: list[str], *, recovered: bool, dropped: list[str] | None = None
    ) -> None:
        """Give this session its id, open it and send the welcome (also used by notifier/connection/resume.py)."""
        directory = self._context.directory
        self.session_id = directory.new_id()
        directory.register(self)
        self.state = State.OPEN
        self._schedule_expiry(identity.expires_at)
        self.log.info("connection_authenticated", recovered=recovered)
        if self._asked_to_resume:
            self._context.stats.resumes["recovered" if recovered else "not_recovered"] += 1
        # The count of events the client has: a resumed session's history starts from it.
        self._sender.session_opened(self.session_id, self.history.sent if recovered else 0)
        welcome = messages.welcome(
            identity.user, topics, identity.expires_at, self.session_id, recovered=recovered, dropped=dropped
        )
        self._outbox.offer(Frame(welcome))

    def frames_after(self, received: int) -> list[Frame] | None:
        """The event frames after the client's `received`-th, or None if they are not all held (never all, with
        resume off)."""
        if not self.history.keeps:
            return None
        return self.history.after(received)

    def held_frames(self) -> tuple[list[Frame], int] | None:
        """Every event frame it holds, and how many it was handed in all (the number of the last one)."""
        return self.history.held() if self.history.keeps else None

    def delivered_ids(self, received: int, limit: int) -> list[str]:
        """The ids of the last `limit` events the client had received when it left (its first `received`)."""
        return self.history.ids_until(received, limit) if self.history.keeps else []

    def hand_over_to_another_instance(self) -> None:
        """Another instance resumed this session: let go of it and release what it holds."""
        self.hand_over()
        self._context.directory.release_later(self.release_slot_and_topics())

    async def _refresh(self, frame: messages.Refresh) -> None:
        assert self.identity is not None
        try:
            identity = await self._context.verifier.verify(frame.token)
        except TokenRejected as rejected:
            code = "token_expired" if rejected.expired else "invalid_token"
            self.reply(messages.error(code, str(rejected), frame.id))
            return
        if identity.user != self.identity.user:
            self.reply(messages.error("forbidden", "a refresh token must be for the same user", frame.id))
            return
        not_granted = [topic for topic in self.topics if not identity.grants.allows(topic)]
        kept = await self.allowed_by_application(identity.user, not_granted) if not_granted else set()
        if self.state is not State.OPEN:
            return
        self.identity = identity
        self._schedule_expiry(identity.expires_at)
        dropped = sorted(set(not_granted) - kept)
        for topic in dropped:
            self.topics.discard(topic)
            self._context.budgets.release(identity.user, topic)
            await self._context.hub.unsubscribe(self, topic)
        self.reply(messages.refreshed(frame.id, identity.expires_at, dropped))

    def _schedule_expiry(self, expires_at: float) -> None:
        self._start_timer(max(0.0, expires_at - time.time()), closecodes.TOKEN_EXPIRED)

    def _start_timer(self, delay_s: float, action: CloseReason | Callable[[], None]) -> None:
        """After `delay_s`, close with `action` if it is a CloseReason, else call it; replaces the deadline
        set before."""
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        if isinstance(action, CloseReason):
            self._timer = loop.call_later(delay_s, self.close, action)
        else:
            self._timer = loop.call_later(delay_s, action)

    def _abandon(self) -> None:
        """The close handshake did not finish in time: drop the socket, which ends the reader too."""
        self.log.info("connection_abandoned")
        self._sender.abort()

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    # Subscriptions.

    def _valid_topic(self, topic: str, request_id: messages.RequestId) -> bool:
        """Whether `topic` keeps to the grammar; if not, the client gets `invalid_topic`."""
        try:
            validate_topic(topic)
        except InvalidTopic as error:
            self.reply(messages.error("invalid_topic", str(error), request_id, topic=topic[:300]))
            return False
        return True

    async def _subscribe(self, frame: messages.Subscribe) -> None:
        assert self.identity is not None
        topic = frame.topic
        if not self._valid_topic(topic, frame.id):
            return
        if not self.identity.grants.allows(topic) and not await self._application_allows(topic, frame.id):
            return
        if topic not in self.topics:
            if len(self.topics) >= self._settings.max_subscriptions:
                message = f"at most {self._settings.max_subscriptions} subscriptions per connection"
                self.reply(messages.error("too_many_subscriptions", message, frame.id, topic=topic))
                return
            refusal = self._take_user_budget(topic)
            if refusal is not None:
                self.reply(messages.error(*refusal, frame.id, topic=topic))
                return
            self.topics.add(topic)
            try:
                await self._context.hub.subscribe(self, topic)
            except BrokerUnavailable:
                self.topics.discard(topic)
                self._context.budgets.release(self.identity.user, topic)
                self.reply(messages.error("unavailable", "broker unavailable, try again", frame.id, topic=topic))
                return
            if self.state is not State.OPEN:
                return
        self.log.debug("subscribed", topic=topic)
        self.reply(messages.subscription("subscribed", topic, frame.id))

    async def _application_allows(self, topic: str, request_id: messages.RequestId) -> bool:
        """A topic the grants do not cover: ask the subscribe proxy, if there is one. False when the answer
        (`forbidden`, or `unavailable` when the application could not say) was sent, or the connection closed
        meanwhile."""
        assert self.identity is not None
        proxies = self._context.proxies
        if proxies is None or proxies.subscribe is None:
            self.reply(messages.error("forbidden", "this token does not grant that topic", request_id, topic=topic))
            return False
        request = self.client_request or ClientRequest((), None, None)
        try:
            allowed = await proxies.may_subscribe(self.identity.user, topic, request)
        except ProxyUnavailable as error:
            self.log.warning("subscribe_proxy_unavailable", topic=topic, error=str(error))
            message = "the application could not answer, try again"
            self.reply(messages.error("unavailable", message, request_id, topic=topic))
            return False
        if not allowed:
            self.log.info("subscribe_proxy_refused", topic=topic)
            message = "the application does not allow that topic"
            self.reply(messages.error("forbidden", message, request_id, topic=topic))
            return False
        return self.state is State.OPEN

    def _take_user_budget(self, topic: str) -> tuple[str, str] | None:
        """The user's budgets across its connections (notifier/limits/budgets.py): the error code and message if
        subscribing to `topic` would overspend them, else None (and the topic is counted)."""
        assert self.identity is not None
        budgets = self._context.budgets
        user = self.identity.user
        if not budgets.spend(user):
            rate = self._settings.user_subscribes_per_s
            return "rate_limited", f"at most {rate:g} subscribe operations per second per user; retry later"
        if not budgets.hold(user, topic):
            return "too_many_subscriptions", f"at most {budgets.max_topics} topics per user"
        return None

    async def _unsubscribe(self, frame: messages.Unsubscribe) -> None:
        topic = frame.topic
        if not self._valid_topic(topic, frame.id):
            return
        if topic in self.topics:
            self.topics.discard(topic)
            if self.identity is not None:
                self._context.budgets.release(self.identity.user, topic)
            await self._context.hub.unsubscribe(self, topic)
        self.reply(messages.subscription("unsubscribed", topic, frame.id))

    async def drop_topic_by_server(self, topic: str) -> bool:
        """The server API took `topic` from this connection: no further event of it reaches the client, which
        is told with an `unsubscribed` frame (reason "server"). Returns whether the connection held it."""
        if self.state is not State.OPEN or topic not in self.topics:
            return False
        self.topics.discard(topic)
        if self.identity is not None:
            self._context.budgets.release(self.identity.user, topic)
        self.reply(messages.unsubscribed_by_server(topic))
        # Leaves the fan-out before its first await, so no event comes between the frame and the removal,
        # and a disconnect right behind this command finds the frame already queued.
        await self._context.hub.unsubscribe(self, topic)
        return True
