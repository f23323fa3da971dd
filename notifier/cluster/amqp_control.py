"""The control plane over RabbitMQ, on the broker's own robust connection (it reconnects with it).

Commands go through the durable topic exchange `<exchange>.control`. Every instance binds its own auto-deleted
queue `<exchange>.control.<instance id>` with the routing keys `all` and `instance.<id>`, and receives replies
on the same queue (through the default exchange). Instances announce themselves with a heartbeat, so a
requester knows how many answers to wait for: it stops at the last expected answer or at the time bound,
whichever comes first, and an instance that did not answer counts as having nothing.

Messages: the AMQP `type` is `command`, `reply`, `hello` or `bye`; a command's body is what
notifier/cluster/codec.py encodes, its `message_id` the command id, and `reply_to` / `correlation_id` say where
its answer goes. A message that cannot be parsed is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from notifier.broker import BrokerUnavailable
from notifier.broker.base import BROKER_ERRORS
from notifier.cluster.codec import (
    MAX_COMMAND_BYTES,
    BadControlMessage,
    Command,
    CommandArgs,
    CommandResult,
    Gathered,
    encode_command,
    encode_reply,
    new_command_id,
    parse_command,
    parse_reply,
)
from notifier.cluster.runner import CommandHandler, CommandRunner
from notifier.settings import Settings

log = structlog.get_logger("notifier.control")

# Commands handled at once per instance (they are acknowledged when done, so RabbitMQ holds the rest).
CONTROL_PREFETCH = 64
# The `hello` header listing the command kinds the sender runs (so that a newer instance knows which of its
# requests an older one understands).
KINDS_HEADER = "x-notifier-kinds"
MAX_ANNOUNCED_KINDS = 64
# A peer not heard from for this many heartbeats is taken for gone.
PEER_HEARTBEATS_TO_EXPIRE = 3
# Instances remembered at most (a bound against messages with made-up sender ids).
MAX_PEERS = 1024
RETRY_MAX_S = 10.0
# A stop must fit in NOTIFIER_SHUTDOWN_TIMEOUT_S even with a broker in trouble: the goodbye is short.
STOP_BYE_TIMEOUT_S = 0.5
# Replies on their way when the instance stops go out before its goodbye, within this bound: a hand-over's
# holder has let go of the session by then, and an asker that heard the goodbye first would have nothing.
STOP_REPLIES_TIMEOUT_S = 1.0


@dataclass
class _Collector:
    """The replies to one command, and the event set when every expected instance answered."""

    expected: set[str]
    replies: dict[str, CommandResult] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, instance_id: str, result: CommandResult) -> None:
        self.replies[instance_id] = result
        if self.expected <= self.replies.keys():
            self.complete.set()

    def gone(self, instance_id: str) -> None:
        """`instance_id` left without answering: no answer is awaited from it any more."""
        if instance_id in self.expected and instance_id not in self.replies:
            self.expected.discard(instance_id)
            if self.expected <= self.replies.keys():
                self.complete.set()


class AmqpControlPlane:
    """The control plane over RabbitMQ, on the broker's own robust connection (it reconnects with it)."""

    def __init__(
        self, settings: Settings, instance_id: str, connection: Callable[[], AbstractRobustConnection | None]
    ) -> None:
        self._settings = settings
        self.instance_id = instance_id
        self._connection_of_broker = connection
        self.exchange_name = f"{settings.exchange}.control"
        self.queue_name = f"{self.exchange_name}.{instance_id}"
        self._runner = CommandRunner()
        self._publish_exchange: AbstractExchange | None = None
        self._reply_exchange: AbstractExchange | None = None
        # Held here: the robust connection keeps its channels only weakly, and restores only those still alive.
        self._channel: AbstractRobustChannel | None = None
        self._collectors: dict[str, _Collector] = {}
        self._peers: dict[str, float] = {}  # instance id -> when it was last heard from (monotonic)
        self._peer_kinds: dict[str, frozenset[str]] = {}  # instance id -> the command kinds it announced
        self._tasks: set[asyncio.Task[None]] = set()
        self._replying: set[asyncio.Task[Any]] = set()  # commands whose handler ran, sending their reply
        self._background: asyncio.Task[None] | None = None
        self._declared = False
        self.dropped = 0
        # An HTTP stream's command carries a client frame, in base64 (notifier/http/stream_commands.py).
        self._max_command_bytes = max(MAX_COMMAND_BYTES, settings.max_frame_bytes * 4 // 3 + 1024)

    @property
    def ready(self) -> bool:
        connection = self._connection_of_broker()
        return self._declared and connection is not None and not connection.is_closed and connection.connected.is_set()

    def on(self, kind: str, handler: CommandHandler) -> None:
        self._runner.on(kind, handler)

    def runs(self, instance_id: str, kind: str) -> bool:
        if instance_id == self.instance_id:
            return kind in self._runner.kinds
        return kind in self._peer_kinds.get(instance_id, ())

    def live_instances(self) -> set[str]:
        """This instance and the peers heard from within the last few heartbeats."""
        horizon = time.monotonic() - PEER_HEARTBEATS_TO_EXPIRE * self._settings.control_heartbeat_s
        for peer, seen in tuple(self._peers.items()):
            if seen < horizon:
                del self._peers[peer]
                self._peer_kinds.pop(peer, None)
        return {self.instance_id, *self._peers}

    # Start and stop.

    async def start(self) -> None:
        if self._background is not None:
            return
        connection = self._connection_of_broker()
        if connection is not None:
            try:
                await self._declare(connection)
            except BROKER_ERRORS as error:
                log.warning("control_start_failed", error=repr(error))
        self._background = asyncio.create_task(self._keep_up(), name="control-plane")

    async def _keep_up(self) -> None:
        """Declare once the broker is connected (retrying with backoff), then send heartbeats."""
        delay = 0.5
        while not self._declared:
            await asyncio.sleep(delay)
            connection = self._connection_of_broker()
            if connection is None:
                continue
            try:
                await self._declare(connection)
            except BROKER_ERRORS as error:
                log.warning("control_start_failed", error=repr(error), retry_in_s=delay)
                delay = min(delay * 2, RETRY_MAX_S)
        while True:
            self.live_instances()  # forget the peers that went quiet
            await self._announce("hello", "all")
            await asyncio.sleep(self._settings.control_heartbeat_s)

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        settings = self._settings
        timeout = settings.broker_timeout_s
        channel = await asyncio.wait_for(connection.channel(publisher_confirms=True), timeout)
        try:
            await channel.set_qos(prefetch_count=CONTROL_PREFETCH)
            exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True, timeout=timeout
            )
            # Auto-deleted with its consumer, and not exclusive, so that a reconnect can re-declare it even
            # while RabbitMQ has not yet noticed that the previous connection is gone.
            queue = await channel.declare_queue(
                self.queue_name,
                auto_delete=True,
                arguments={
                    "x-max-length": settings.control_queue_max_length,
                    "x-overflow": "drop-head",
                    "x-expires": int(max(settings.queue_expires_s, 10 * settings.control_heartbeat_s) * 1000),
                },
                timeout=timeout,
            )
            await queue.bind(exchange, "all", timeout=timeout)
            await queue.bind(exchange, f"instance.{self.instance_id}", timeout=timeout)
            await queue.consume(self._on_message, timeout=timeout)
        except BaseException:
            with contextlib.suppress(*BROKER_ERRORS):
                await channel.close()
            raise
        self._channel = channel
        self._publish_exchange, self._reply_exchange = exchange, channel.default_exchange
        self._declared = True
        log.info("control_plane_started", queue=self.queue_name, exchange=self.exchange_name)
        await self._announce("hello", "all")

    async def stop(self) -> None:
        """Send the replies on their way (at most STOP_REPLIES_TIMEOUT_S), say `bye` (best effort, at most
        STOP_BYE_TIMEOUT_S) and stop handling commands. The channel and its auto-deleted queue go with the broker
        connection, which the node closes right after."""
        if self._background is not None:
            self._background.cancel()
            await asyncio.wait([self._background])
            self._background = None
        if self._replying:
            _, late = await asyncio.wait(self._replying, timeout=STOP_REPLIES_TIMEOUT_S)
            if late:
                log.warning("control_replies_not_sent", replies=len(late))
        if self.ready:
            await self._announce("bye", "all", timeout=min(STOP_BYE_TIMEOUT_S, self._settings.broker_timeout_s))
        self._declared = False
        self._channel = self._publish_exchange = self._reply_exchange = None
        for task in tuple(self._tasks):
            task.cancel()

    async def _announce(self, kind: str, routing_key: str, timeout: float | None = None) -> None:
        """Tell the other instances this one is alive (`hello`) or leaving (`bye`); best effort."""
        exchange = self._publish_exchange
        if exchange is None:
            return
        message = aio_pika.Message(
            b"",
            type=kind,
            app_id=self.instance_id,
            expiration=self._settings.control_heartbeat_s,
            headers={KINDS_HEADER: ",".join(sorted(self._runner.kinds))},
        )
        try:
            await exchange.publish(message, routing_key=routing_key, timeout=timeout or self._settings.broker_timeout_s)
        except BROKER_ERRORS as error:
            log.info("control_announce_failed", kind=kind, error=repr(error))

    # Sending.

    async def _publish(
        self, routing_key: str, command: Command, *, expiration: float, reply: bool, deadline: float
    ) -> None:
        exchange = self._publish_exchange
        if exchange is None or not self.ready:
            raise BrokerUnavailable("the control plane is not connected to RabbitMQ")
        message = aio_pika.Message(
            encode_command(command.kind, command.args),
            content_type="application/json",
            type="command",
            message_id=command.id,
            correlation_id=command.id if reply else None,
            reply_to=self.queue_name if reply else None,
            app_id=self.instance_id,
            expiration=expiration,
        )
        try:
            async with asyncio.timeout_at(deadline):
                await exchange.publish(message, routing_key=routing_key)
        except (*BROKER_ERRORS, TimeoutError) as error:
            raise BrokerUnavailable(f"control command not confirmed: {error!r}") from None

    async def broadcast(self, kind: str, args: CommandArgs, *, command_id: str | None = None) -> str:
        command = Command(command_id or new_command_id(), kind, args)
        deadline = asyncio.get_running_loop().time() + self._settings.broker_timeout_s
        await self._publish(
            "all", command, expiration=self._settings.control_command_ttl_s, reply=False, deadline=deadline
        )
        return command.id

    async def gather(self, kind: str, args: CommandArgs, *, timeout: float) -> Gathered:
        expected = self.live_instances()
        replies = await self._request("all", expected, kind, args, timeout)
        return Gathered(replies, expected=len(expected))

    async def ask(self, instance_id: str, kind: str, args: CommandArgs, *, timeout: float) -> CommandResult:
        replies = await self._request(f"instance.{instance_id}", {instance_id}, kind, args, timeout)
        return replies.get(instance_id)

    async def _request(
        self, routing_key: str, expected: set[str], kind: str, args: CommandArgs, timeout: float
    ) -> dict[str, CommandResult]:
        if len(self._collectors) >= self._settings.control_max_pending:
            raise BrokerUnavailable(f"more than {self._settings.control_max_pending} control requests await replies")
        command = Command(new_command_id(), kind, args)
        collector = _Collector(set(expected))
        deadline = asyncio.get_running_loop().time() + timeout
        self._collectors[command.id] = collector
        try:
            # A command nobody took within the bound is useless: RabbitMQ drops it then.
            await self._publish(routing_key, command, expiration=timeout, reply=True, deadline=deadline)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await collector.complete.wait()
        finally:
            del self._collectors[command.id]
        return dict(collector.replies)

    # Receiving.

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Each command runs in its own task, so a slow one does not hold up presence replies behind it; the
        # tasks start in the order the commands arrived, and the acknowledgement after each keeps at most
        # CONTROL_PREFETCH in hand.
        self._spawn(self._handle(message))

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            sender = message.app_id
            if isinstance(sender, str) and sender and sender != self.instance_id:
                if message.type == "bye":
                    self._peers.pop(sender, None)
                    self._peer_kinds.pop(sender, None)
                    self._stop_waiting_for(sender)
                else:
                    known = sender in self._peers
                    if not known and len(self._peers) >= MAX_PEERS:
                        self.live_instances()  # forget the quiet ones to make room
                    if known or len(self._peers) < MAX_PEERS:
                        self._peers[sender] = time.monotonic()
                        if message.type == "hello":
                            self._peer_kinds[sender] = _announced_kinds(message.headers)
                    if message.type == "hello" and not known:
                        # A newcomer learns of this instance at once rather than at the next heartbeat.
                        self._spawn(self._announce("hello", f"instance.{sender}"))
            if message.type == "command":
                await self._on_command(message)
            elif message.type == "reply":
                self._on_reply(message)
            elif message.type not in ("hello", "bye"):
                raise BadControlMessage(f"unknown control message type {str(message.type)[:40]!r}")
        except BadControlMessage as error:
            self.dropped += 1
            log.warning("control_message_dropped", reason=str(error), message_id=str(message.message_id)[:128])
        finally:
            with contextlib.suppress(*BROKER_ERRORS):
                await message.ack()

    async def _on_command(self, message: AbstractIncomingMessage) -> None:
        command = parse_command(message.message_id, message.body, self._max_command_bytes)
        ran, result = await self._runner.run(command)
        reply_to = message.reply_to
        if not ran or not reply_to or self._reply_exchange is None:
            return
        # From the handler's return to here nothing yields: a stop sees this reply as on its way.
        replying = asyncio.current_task()
        if replying is not None:
            self._replying.add(replying)
            replying.add_done_callback(self._replying.discard)
        reply = aio_pika.Message(
            encode_reply(result),
            content_type="application/json",
            type="reply",
            correlation_id=message.correlation_id,
            app_id=self.instance_id,
            # As long as the longest wait of a requester (presence or a session hand-over).
            expiration=max(self._settings.control_reply_timeout_s, self._settings.resume_timeout_s),
        )
        try:
            await self._reply_exchange.publish(reply, routing_key=reply_to, timeout=self._settings.broker_timeout_s)
        except BROKER_ERRORS as error:
            log.info("control_reply_failed", command=command.id, error=repr(error))

    def _stop_waiting_for(self, leaving: str) -> None:
        """A request to an instance that said goodbye ends now, not at its timeout: the asker can go elsewhere
        (a stopping instance's sessions are with the peer that adopted them)."""
        for collector in self._collectors.values():
            collector.gone(leaving)

    def _on_reply(self, message: AbstractIncomingMessage) -> None:
        collector = self._collectors.get(str(message.correlation_id))
        if collector is None:
            return  # an answer after the requester stopped waiting
        sender = message.app_id
        if not isinstance(sender, str) or not sender:
            raise BadControlMessage("reply without the sender's instance id")
        collector.add(sender, parse_reply(message.body))


def _announced_kinds(headers: object) -> frozenset[str]:
    """The command kinds a `hello` announced; none when it says nothing intelligible (an earlier release)."""
    value = headers.get(KINDS_HEADER) if isinstance(headers, dict) else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return frozenset()
    return frozenset(kind[:64] for kind in value.split(",")[:MAX_ANNOUNCED_KINDS] if kind)
