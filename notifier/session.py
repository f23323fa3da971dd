"""One WebSocket client: its state machine (awaiting auth -> open -> closing), its subscriptions,
its bounded send queue and writer task, its token's expiry. The protocol's rules live here."""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from notifier import closecodes, frames
from notifier.auth import Identity, TokenRejected
from notifier.broker import BrokerUnavailable
from notifier.closecodes import CloseReason
from notifier.protocols import FRAME_BUDGET_SCOPE_KEY
from notifier.ratelimit import RateLimiter
from notifier.topics import InvalidTopic, validate_topic
from notifier.wire import DirectWriter, Frame

if TYPE_CHECKING:
    from notifier.node import Node

log = structlog.get_logger("notifier.session")

# How long a closing connection may take to finish its close handshake before it is dropped.
CLOSE_GRACE_S = 5.0
_SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    OPEN = "open"
    CLOSING = "closing"


class Session:
    """Serves one WebSocket connection from handshake to close."""

    def __init__(self, node: Node, websocket: WebSocket) -> None:
        self._node = node
        self._settings = node.settings
        self._websocket = websocket
        self.connection_id = uuid.uuid4().hex[:16]
        self.state = State.AWAITING_AUTH
        self.identity: Identity | None = None
        self.topics: set[str] = set()
        self._outbox: deque[Frame] = deque()
        self._outbox_limit = self._settings.send_queue_size
        self._wakeup = asyncio.Event()
        self._writer_idle = False
        self._direct = DirectWriter.attach(websocket.scope)
        self._close_reason: CloseReason | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Under `notifier serve` the connection's protocol owns the budget, so pings spend it too.
        self._rate: RateLimiter = websocket.scope.get(FRAME_BUDGET_SCOPE_KEY) or RateLimiter(
            self._settings.client_frames_per_s, self._settings.client_frames_burst
        )
        self._log = log.bind(conn=self.connection_id)

    @property
    def user(self) -> str | None:
        return self.identity.user if self.identity else None

    # The hub's side: never waits.

    def offer(self, frame: Frame) -> None:
        """Send a frame now if the socket takes it, else queue it; a full queue means the client is too slow
        and is closed."""
        if self.state is State.CLOSING:
            return
        outbox = self._outbox
        if not outbox and self._writer_idle:
            direct = self._direct
            if direct is not None and direct.try_write(frame.wire):
                return  # nothing was queued before it, so the order is kept
        if len(outbox) >= self._outbox_limit:
            self.close(closecodes.SLOW_CLIENT, drop_pending=True)
            return
        outbox.append(frame)
        if self._writer_idle:
            self._wakeup.set()

    def reply(self, text: str) -> None:
        """Send one of this connection's own frames (welcome, answers, errors)."""
        self.offer(Frame(text))

    def close(self, reason: CloseReason, *, drop_pending: bool = False) -> None:
        """Close the connection with `reason`, after sending what is queued unless `drop_pending`."""
        if self.state is State.CLOSING:
            return
        self.state = State.CLOSING
        self._close_reason = reason
        if drop_pending:
            self._node.frames_dropped += len(self._outbox)
            self._outbox.clear()
        for timer in self._timers.values():
            timer.cancel()
        # A client that stopped reading never answers the close, and the reader may be waiting on it.
        self._start_timer("abandon", CLOSE_GRACE_S, self._abandon)
        self._node.closes_by_code[reason.code] += 1
        self._log.info("connection_closing", user=self.user, code=reason.code, reason=reason.reason)
        self._wakeup.set()

    # The connection's life.

    async def run(self, token_in_url: str | None) -> None:
        """Serve the connection until it ends; the caller has checked the origin and accepted."""
        self._task = asyncio.current_task()
        writer = asyncio.create_task(self._write_loop(), name=f"writer-{self.connection_id}")
        try:
            if self._node.at_capacity():
                self.close(closecodes.SERVER_FULL)
            elif token_in_url is not None:
                await self._authenticate(token_in_url, request_id=None)
            else:
                self._start_timer("auth", self._settings.auth_timeout_s, closecodes.AUTH_TIMEOUT)
            await self._read_loop()
        finally:
            self.state = State.CLOSING
            for timer in self._timers.values():
                timer.cancel()
            # The reader ends when the client is gone or did not answer our close in time: either way nothing
            # the writer still holds can reach it. Stop the writer rather than wait on it (this also runs
            # while the event loop shuts down, where every second of waiting delays the exit).
            if not writer.done():
                writer.cancel()
                await asyncio.wait([writer])
                if self._direct is not None:
                    self._direct.abort()  # drop unsent bytes instead of keeping them until TCP gives up
            await self._node.forget(self)

    async def _read_loop(self) -> None:
        receive = self._websocket.receive
        while True:
            if self.state is State.CLOSING:
                # We sent (or are sending) a close frame: wait a bounded time for the client's answer.
                try:
                    message = await asyncio.wait_for(receive(), CLOSE_GRACE_S)
                except (TimeoutError, *_SEND_ERRORS):
                    return
            else:
                message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return
            if self.state is State.CLOSING:
                continue
            await self._on_message(message)

    async def _on_message(self, message: MutableMapping[str, Any]) -> None:
        if not self._rate.allow():
            self.close(closecodes.RATE_LIMITED)
            return
        text = message.get("text")
        if text is None:
            self._reply_or_violate(frames.BadFrame("bad_request", "binary frames are not accepted; send JSON text"))
            return
        if len(text) > self._settings.max_frame_bytes or len(text.encode()) > self._settings.max_frame_bytes:
            self.close(closecodes.MESSAGE_TOO_BIG)
            return
        try:
            frame = frames.parse_client_frame(text)
        except frames.BadFrame as bad:
            self._reply_or_violate(bad)
            return
        await self._on_frame(frame)

    def _reply_or_violate(self, bad: frames.BadFrame) -> None:
        if self.state is State.AWAITING_AUTH:
            self.close(closecodes.PROTOCOL_VIOLATION)
        else:
            self.reply(frames.error(bad.code, bad.message, bad.request_id))

    async def _on_frame(self, frame: frames.ClientFrame) -> None:
        if self.state is State.AWAITING_AUTH:
            if isinstance(frame, frames.Auth):
                await self._authenticate(frame.token, request_id=frame.id)
            else:
                self.close(closecodes.PROTOCOL_VIOLATION)
            return
        if isinstance(frame, frames.Subscribe):
            await self._subscribe(frame)
        elif isinstance(frame, frames.Unsubscribe):
            await self._unsubscribe(frame)
        elif isinstance(frame, frames.Ping):
            self.reply(frames.pong(frame.id))
        elif isinstance(frame, frames.Refresh):
            await self._refresh(frame)
        else:
            self.reply(frames.error("bad_request", "already authenticated; use 'refresh' for a new token", frame.id))

    # Authentication and token lifetime.

    async def _authenticate(self, token: str, request_id: frames.RequestId) -> None:
        self._cancel_timer("auth")
        try:
            identity = await self._node.verifier.verify(token)
        except TokenRejected as rejected:
            self._log.info("auth_rejected", reason=str(rejected))
            self.close(closecodes.TOKEN_EXPIRED if rejected.expired else closecodes.INVALID_TOKEN)
            return
        if not self._node.user_budgets.spend(identity.user):  # reconnecting does not refill the user's budget
            self.close(closecodes.RATE_LIMITED)
            return
        if not self._node.admit_user(identity.user):
            self.close(closecodes.USER_CONNECTION_LIMIT)
            return
        self.identity = identity  # from here on the node counts this connection against the user
        self._log = self._log.bind(user=identity.user)
        personal = identity.grants.personal_topic
        try:
            await self._node.hub.subscribe(self, personal)
        except BrokerUnavailable as error:
            self._log.warning("personal_topic_unavailable", error=str(error))
            self.close(closecodes.TRY_AGAIN_LATER)
            return
        if self.state is State.CLOSING:  # closed while binding (shutdown, for instance)
            await self._node.hub.unsubscribe(self, personal)
            return
        self.topics.add(personal)
        self.state = State.OPEN
        self._schedule_expiry(identity.expires_at)
        self._log.info("connection_authenticated")
        self.reply(frames.welcome(identity.user, [personal], identity.expires_at))

    async def _refresh(self, frame: frames.Refresh) -> None:
        assert self.identity is not None
        try:
            identity = await self._node.verifier.verify(frame.token)
        except TokenRejected as rejected:
            code = "token_expired" if rejected.expired else "invalid_token"
            self.reply(frames.error(code, str(rejected), frame.id))
            return
        if identity.user != self.identity.user:
            self.reply(frames.error("forbidden", "a refresh token must be for the same user", frame.id))
            return
        self.identity = identity
        self._schedule_expiry(identity.expires_at)
        dropped = sorted(topic for topic in self.topics if not identity.grants.allows(topic))
        for topic in dropped:
            self.topics.discard(topic)
            self._node.user_budgets.release(identity.user, topic)
            await self._node.hub.unsubscribe(self, topic)
        self.reply(frames.refreshed(frame.id, identity.expires_at, dropped))

    def _schedule_expiry(self, expires_at: float) -> None:
        self._start_timer("expiry", max(0.0, expires_at - time.time()), closecodes.TOKEN_EXPIRED)

    def _start_timer(self, name: str, delay_s: float, action: CloseReason | Callable[[], None]) -> None:
        """After `delay_s`, close with `action` if it is a CloseReason, else call it."""
        self._cancel_timer(name)
        loop = asyncio.get_running_loop()
        if isinstance(action, CloseReason):
            self._timers[name] = loop.call_later(delay_s, self.close, action)
        else:
            self._timers[name] = loop.call_later(delay_s, action)

    def _abandon(self) -> None:
        """The close handshake did not finish in time: drop the socket, which ends the reader too."""
        self._log.info("connection_abandoned", user=self.user)
        if self._direct is not None:
            self._direct.abort()
        elif self._task is not None:
            self._task.cancel()

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    # Subscriptions.

    async def _subscribe(self, frame: frames.Subscribe) -> None:
        assert self.identity is not None
        topic = frame.topic
        try:
            validate_topic(topic)
        except InvalidTopic as error:
            self.reply(frames.error("invalid_topic", str(error), frame.id, topic=topic[:300]))
            return
        if not self.identity.grants.allows(topic):
            self.reply(frames.error("forbidden", "this token does not grant that topic", frame.id, topic=topic))
            return
        if topic not in self.topics:
            if len(self.topics) >= self._settings.max_subscriptions:
                message = f"at most {self._settings.max_subscriptions} subscriptions per connection"
                self.reply(frames.error("too_many_subscriptions", message, frame.id, topic=topic))
                return
            refusal = self._take_user_budget(topic)
            if refusal is not None:
                self.reply(frames.error(*refusal, frame.id, topic=topic))
                return
            self.topics.add(topic)
            try:
                await self._node.hub.subscribe(self, topic)
            except BrokerUnavailable:
                self.topics.discard(topic)
                self._node.user_budgets.release(self.identity.user, topic)
                self.reply(frames.error("unavailable", "broker unavailable, try again", frame.id, topic=topic))
                return
            if self.state is State.CLOSING:
                return
        self._log.debug("subscribed", topic=topic)
        self.reply(frames.subscription("subscribed", topic, frame.id))

    def _take_user_budget(self, topic: str) -> tuple[str, str] | None:
        """The user's budgets across its connections (notifier/budgets.py): the error code and message if
        subscribing to `topic` would overspend them, else None (and the topic is counted)."""
        assert self.identity is not None
        budgets = self._node.user_budgets
        user = self.identity.user
        if not budgets.spend(user):
            rate = self._settings.user_subscribes_per_s
            return "rate_limited", f"at most {rate:g} subscribe operations per second per user; retry later"
        if not budgets.hold(user, topic):
            return "too_many_subscriptions", f"at most {budgets.max_topics} topics per user"
        return None

    async def _unsubscribe(self, frame: frames.Unsubscribe) -> None:
        topic = frame.topic
        try:
            validate_topic(topic)
        except InvalidTopic as error:
            self.reply(frames.error("invalid_topic", str(error), frame.id, topic=topic[:300]))
            return
        if topic in self.topics:
            self.topics.discard(topic)
            if self.identity is not None:
                self._node.user_budgets.release(self.identity.user, topic)
            await self._node.hub.unsubscribe(self, topic)
        self.reply(frames.subscription("unsubscribed", topic, frame.id))

    # The writer: the only task that sends on the socket.

    async def _write_loop(self) -> None:
        send = self._websocket.send
        outbox = self._outbox
        direct = self._direct
        try:
            while True:
                if outbox:
                    if direct is None:
                        await send({"type": "websocket.send", "text": outbox.popleft().text})
                        continue
                    if not direct.writable.is_set():
                        await direct.writable.wait()  # the client reads slowly; its queue fills meanwhile
                    if not direct.is_open():
                        self.state = State.CLOSING
                        return
                    # Everything waiting goes out in one write: fewer system calls under load.
                    batch = [outbox.popleft().wire for _ in range(len(outbox))]
                    direct.write(b"".join(batch))
                    continue
                if self._close_reason is not None:
                    reason = self._close_reason
                    await send({"type": "websocket.close", "code": reason.code, "reason": reason.reason})
                    return
                if self.state is State.CLOSING:
                    return  # the client went away first
                self._wakeup.clear()
                self._writer_idle = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._writer_idle = False
        except _SEND_ERRORS:
            self.state = State.CLOSING
