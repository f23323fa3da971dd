"""RabbitMQ through aio-pika: one durable topic exchange, one queue per instance bound to its clients' topics.

aio-pika's robust connection reconnects by itself and re-declares the exchange and the queue; the consumer is
aiormq's own `basic_consume` on the robust channel's current underlying channel, started again each time that
channel is reopened. aio-pika's layer over aiormq (an IncomingMessage for every delivery) was the larger part
of what consuming cost, so a delivered frame becomes an Event directly.
The instance queue is not exclusive and expires after NOTIFIER_QUEUE_EXPIRES_S without a consumer, so it
survives a short outage with its messages, and a dead instance leaves nothing behind.

Routing (the queue, consumed, with a binding per held topic) is state this module owns and rebuilds: after a
reconnect (to any node of NOTIFIER_AMQP_URL, notifier/broker/failover.py) or a cancelled consumer, the queue is
looked up where it was; if it is gone, or its node is down (a classic queue lives on one node), a queue is
declared on a live node, every held topic is bound to it again, and the instance is told of the gap, since
events routed meanwhile may be lost. A quorum queue (NOTIFIER_QUEUE_TYPE=quorum) outlives the loss of a
minority of nodes with its messages and bindings: then nothing is lost and there is no gap.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aiormq import spec
from aiormq.abc import DeliveredMessage

from notifier.broker.aiormq_internals import (
    deepen_frame_buffer,
    inline_deliveries,
    read_timestamps_as_seconds,
    wait_less_for_close_ok,
    write_frames,
)
from notifier.broker.base import BROKER_ERRORS as _BROKER_ERRORS
from notifier.broker.base import BrokerUnavailable, EventHandler, PublishNotSent, RoutingGapHandler
from notifier.broker.bindings import Bindings, ChannelSource
from notifier.broker.catch_up import CatchUp
from notifier.broker.event_message import event_message
from notifier.broker.failover import NodeAddresses, connect_to_any
from notifier.broker.redelivery import PREFETCHES_KEPT, RecentHandOffs
from notifier.broker.settlements import InOrderSettlements
from notifier.formats.events import UnusableMessage, event_from_message, publish_time_ms
from notifier.settings import Settings

log = structlog.get_logger("notifier.broker")

# A message's `timestamp` is whole seconds, as AMQP says, whatever its size (docs/protocol.md, Broker side).
read_timestamps_as_seconds()

# Acknowledge with one `multiple` ack per burst of messages: at most this many at a time, and at the latest
# this long after the first of them was handed off. (Each ack is a frame, a task and a send for us and work for
# RabbitMQ; aiormq hands over only a few deliveries per loop turn, so a flush per turn acked every few messages.)
ACK_BATCH = 64
ACK_DELAY_S = 0.005

# Channels that send binds (pipelined batches, one sender each), plus one that sends unbinds and one that
# sends a storm's covers (notifier/broker/bindings.py). Six come close
# to the broker's own ceiling from one instance (python -m bench.bindrate; three gave about two thirds of it).
BIND_CHANNELS = 6
# Binds sent back to back before one confirmed bind acts as the barrier for them all.
BIND_BATCH = 256

# A delivery is three frames (method, header, body: an event's body fits in one frame).
FRAMES_PER_MESSAGE = 3

# The header that tells an operator reading the dead-letter queue why notifier refused a message.
ERROR_HEADER = "x-notifier-error"
ERROR_HEADER_MAX_CHARS = 500

# Before the queue is deleted, how long the bind and unbind requests already sent may take to be answered.
QUIET_BINDINGS_WAIT_S = 0.5

# The type of the markers an instance sends through its own queue to know it caught up (notifier/broker/catch_up.py).
CATCH_UP_MARKER = "notifier.catch-up"

# How often a restore of routing that failed (no node reachable, the queue's node not yet answering) tries again.
ROUTING_RETRY_S = 1.0

T = TypeVar("T")


async def within(step: Coroutine[Any, Any, T], timeout_s: float) -> T:
    """Await `step` for at most `timeout_s`, then raise TimeoutError without waiting for it to unwind: on a
    silent line a cancelled AMQP call can take as long as the connection's own timeout to finish, and
    `asyncio.wait_for` would wait for that too."""
    task = asyncio.ensure_future(step)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_forget_result)
        raise TimeoutError
    return task.result()


def _forget_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


class AmqpBroker:
    """The production broker: RabbitMQ over AMQP 0-9-1."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.instance_id = settings.instance_id or uuid.uuid4().hex[:12]
        self.queue_name = f"{settings.exchange}.instance.{self.instance_id}"
        self._queues_made = 1  # a queue whose node was lost is replaced by one with the next number
        self._addresses = NodeAddresses(
            settings.amqp_urls,
            reconnect_interval=1.0,
            # A line held open but silent is noticed after a few missed heartbeats, then reconnected.
            heartbeat=settings.broker_heartbeat_s,
        )
        self._connection: AbstractRobustConnection | None = None
        self._exchange_name = settings.exchange
        self._publish_exchange: AbstractExchange | None = None
        self._dead_letter_exchange: AbstractExchange | None = None
        self._own_queue_exchange: AbstractExchange | None = None  # the default exchange: straight to a queue
        self.catch_up = CatchUp(self._send_marker)
        # Dead letters being republished: while any is, no `multiple` ack may cover it before it is confirmed.
        self._dead_lettering = 0
        self._consume_channel: AbstractRobustChannel | None = None
        # The underlying channel the consumer runs on and its tag; delivery tags are only valid on that channel.
        self._consuming_on: aiormq.abc.AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._stopped_consuming = False
        self._queue_delete_sent = False
        self._recovering: asyncio.Future[None] | None = None
        # False from the moment routing is known broken (connection lost, consumer cancelled) until restored.
        self._routing_ok = False
        self._on_event: EventHandler | None = None
        self._on_routing_gap: RoutingGapHandler | None = None
        # The newest handed-off delivery not yet acknowledged, and the channel it came on.
        self._ack_channel: aiormq.abc.AbstractChannel | None = None
        self._ack_tag = 0
        self._unacked = 0
        self._ack_timer: asyncio.TimerHandle | None = None
        self._settling: set[asyncio.Future[None]] = set()
        self._in_order = InOrderSettlements(self._settle)
        self.bindings = Bindings(
            self.queue_name,
            self._exchange_name,
            wait_s=settings.bind_wait_s,
            max_waiting=settings.bind_queue_size,
            linger_s=settings.bind_linger_s,
            batch=BIND_BATCH,
            cover_at=settings.bind_cover_at,
            max_covers=settings.bind_max_covers,
        )
        self.reconnects = 0
        self.routing_gaps = 0
        self.dead_lettered = 0
        self._handed_off = RecentHandOffs(PREFETCHES_KEPT * settings.prefetch)
        self.redeliveries_dropped = 0
        self._pending_publishes = 0

    @property
    def connected(self) -> bool:
        """The connection to a node is up (publishing works); routing may still be being restored."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    @property
    def ready(self) -> bool:
        """Routing works: connected, and consuming the queue that every held topic is bound to."""
        return self._routing_ok and self.connected and self._consumer_tag is not None

    @property
    def connection(self) -> AbstractRobustConnection | None:
        """The robust connection, once connected; the control plane opens its channels on it."""
        return self._connection

    async def connect(self, on_event: EventHandler, on_routing_gap: RoutingGapHandler | None = None) -> None:
        settings = self._settings
        self._on_event = on_event
        self._on_routing_gap = on_routing_gap
        connection = await connect_to_any(
            self._addresses,
            timeout=settings.broker_timeout_s,
            client_properties={"connection_name": f"notifier {self.instance_id}"},
        )
        try:
            await self._declare(connection)
        except BaseException:
            await connection.close()  # no half-set-up connection reconnecting in the background
            raise
        self._connection = connection
        connection.reconnect_callbacks.add(self._after_reconnect)
        connection.close_callbacks.add(self._on_connection_lost)
        self._routing_ok = True
        log.info("broker_connected", queue=self.queue_name, exchange=settings.exchange, node=self.node)

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        settings = self._settings
        await self._declare_dead_letters(connection)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.prefetch)
        await channel.declare_exchange(settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await self._establish_queue(connection, fresh=True)
        await self._start_bindings(connection)
        publish_channel = await connection.channel(publisher_confirms=True)
        self._publish_exchange = await publish_channel.get_exchange(settings.exchange, ensure=False)
        self._dead_letter_exchange = await publish_channel.get_exchange(settings.dead_letter_exchange, ensure=False)
        self._consume_channel = channel
        # Markers go without a confirm: one that is lost is a wait that times out, and none is left waiting on a
        # connection that closes.
        self._own_queue_exchange = channel.default_exchange
        # The robust channel calls this when it is reopened (after a reconnect): routing is restored then.
        channel.reopen_callbacks.add(self._consume_again)
        await self._consume(await channel.get_underlay_channel())

    @property
    def node(self) -> str:
        """The address of the node this instance connects to (or last tried), without credentials."""
        url = self._addresses.current
        return f"{url.host}:{url.port}"

    async def _establish_queue(self, connection: AbstractRobustConnection, *, fresh: bool) -> bool:
        """Make sure this instance's queue exists on a live node. True if it is the queue consumed before, with
        every binding and message (nothing lost); False if a new one was declared (bind everything again).

        It is declared on a channel of its own, not the robust channel: aio-pika would re-declare it in every
        reconnect, and a classic queue whose node is down cannot be declared at all, which tore the
        connection down on each attempt. A declare that fails closes its channel, hence a channel per try.
        """
        timeout_s = self._settings.broker_timeout_s
        channel = await _plain_channel(connection)
        try:
            existed = False
            try:
                if fresh:
                    # A queue left by an earlier process with this NOTIFIER_INSTANCE_ID carries bindings and
                    # events for clients that are gone; start from a clean one.
                    await channel.queue_delete(self.queue_name, timeout=timeout_s)
                else:
                    await channel.queue_declare(self.queue_name, passive=True, timeout=timeout_s)
                    existed = True
            except aiormq.exceptions.ChannelNotFoundEntity as error:
                channel = await _plain_channel(connection)
                if _node_down(error):
                    self._replace_queue(str(error))
            await channel.queue_declare(
                self.queue_name, durable=True, arguments=self._queue_arguments(), timeout=timeout_s
            )
            return existed
        finally:
            if not channel.is_closed:
                await channel.close()

    def _replace_queue(self, why: str) -> None:
        old = self.queue_name
        self._queues_made += 1
        self.queue_name = f"{self._settings.exchange}.instance.{self.instance_id}.{self._queues_made}"
        log.warning("broker_queue_replaced", old_queue=old, queue=self.queue_name, reason=why[:300])

    def _queue_arguments(self) -> dict[str, Any]:
        settings = self._settings
        return {
            "x-queue-type": settings.instance_queue_type,
            "x-expires": int(settings.queue_expires_s * 1000),
            "x-dead-letter-exchange": settings.dead_letter_exchange,
            # Bounded: past this length the oldest messages are dead-lettered, never silently dropped.
            "x-max-length": settings.queue_max_length,
            "x-overflow": "drop-head",
        }

    async def _consume(self, channel: aiormq.abc.AbstractChannel) -> None:
        channel.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
        deepen_frame_buffer(channel, FRAMES_PER_MESSAGE * self._settings.prefetch)
        consume_ok = await channel.basic_consume(
            self.queue_name, inline_deliveries(channel, self._on_delivery), timeout=self._settings.broker_timeout_s
        )
        tag: str = consume_ok.consumer_tag  # type: ignore[assignment]  # always set in a ConsumeOk
        current = self._consuming_on
        if self._stopped_consuming or (current is not None and not current.is_closed and self._consumer_tag):
            # Stopped while this was on its way, or a recovery and a reopen both consumed: keep one consumer.
            await self._cancel(channel, tag)
            return
        self._consuming_on, self._consumer_tag = channel, tag

    async def _consume_again(self, _: AbstractRobustChannel | None) -> None:
        """The consume channel was reopened (after a reconnect): restore routing, in a task, so the robust
        connection can go on restoring its other channels meanwhile."""
        self._routing_lost("reconnected")

    def _on_consumer_cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """RabbitMQ cancelled our consumer: the queue is gone (deleted by hand) or its node is down. Called from
        the channel's reader, which must go on reading for the recovery's answers to arrive, so the recovery is
        a task."""
        if frame.consumer_tag != self._consumer_tag or self._stopped_consuming:
            return
        log.warning("broker_consumer_cancelled", queue=self.queue_name)
        self._consuming_on = self._consumer_tag = None
        self._routing_lost("consumer cancelled")

    def _on_connection_lost(self, *_: object) -> None:
        if not self._stopped_consuming and self._connection is not None:
            self._routing_ok = False

    def _routing_lost(self, reason: str) -> None:
        self._routing_ok = False
        self.catch_up.fail_all(f"routing lost: {reason}")
        if self._stopped_consuming or self._consume_channel is None:
            return
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.ensure_future(self._restore_routing(reason))

    async def _restore_routing(self, reason: str) -> None:
        """Find or make the queue on a live node, consume it, and bind every held topic again; retried until it
        works. If the queue is a new one, events routed in the gap may be lost: the instance is told once every
        held topic is bound again, so that clients that fetch their state anew miss nothing after it."""
        lost_at = time.monotonic()
        log.warning("routing_lost", reason=reason, queue=self.queue_name)
        while True:
            if self._stopped_consuming or self._consume_channel is None:
                return
            connection = self._connection
            try:
                if connection is None or not self.connected:
                    raise BrokerUnavailable("not connected")
                kept = await self._establish_queue(connection, fresh=False)
                await self._consume(await self._consume_channel.get_underlay_channel())
            except (*_BROKER_ERRORS, BrokerUnavailable) as error:
                log.warning("routing_restore_failed", reason=str(error)[:300] or repr(error), node=self.node)
                await asyncio.sleep(ROUTING_RETRY_S)
                continue
            break
        if kept:
            # Bound again once per restore (binding twice is harmless), and the unbinds missed meanwhile go out.
            self.bindings.after_reconnect()
        else:
            self.bindings.move_to(self.queue_name)
            if not await self.bindings.wait_all_bound(self._settings.bind_wait_s):
                log.warning("routing_rebind_incomplete", queue=self.queue_name, waiting=self.bindings.waiting)
            self.routing_gaps += 1
        self._routing_ok = True
        log.info(
            "routing_restored",
            queue=self.queue_name,
            node=self.node,
            events_may_be_lost=not kept,
            gap_s=round(time.monotonic() - lost_at, 3),
        )
        if not kept and self._on_routing_gap is not None:
            self._on_routing_gap(reason)

    async def _declare_dead_letters(self, connection: AbstractRobustConnection) -> None:
        """Declare the shared dead-letter exchange and queue; if the queue already exists with other
        arguments (an earlier NOTIFIER_DEAD_LETTER_MAX_LENGTH or queue type), keep it as it is rather than fail
        to start; if it lives on a node that is down, start without it (it is there, bound, once its node is
        back; a message dead-lettered meanwhile is dropped by RabbitMQ)."""
        name = self._settings.dead_letter_exchange
        channel = await connection.channel()
        arguments: dict[str, Any] = {"x-max-length": self._settings.dead_letter_max_length}
        if self._settings.instance_queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"  # replicated: no single node holds it
        try:
            exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            await queue.bind(exchange)
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            log.warning("dead_letter_queue_kept", queue=name, error=str(error))
        except aiormq.exceptions.ChannelNotFoundEntity as error:
            if not _node_down(error):
                raise
            log.warning("dead_letter_queue_unavailable", queue=name, error=str(error)[:300])
        finally:
            if not channel.is_closed:
                await channel.close()

    async def stop_consuming(self) -> None:
        self._stopped_consuming = True
        self.catch_up.fail_all("stopped consuming")
        if self._recovering is not None:
            self._recovering.cancel()
        await self._cancel_consumer()
        self._on_event = None  # messages already sent to us but not handed off go back to the queue
        self._flush_acks()
        if self._settling:
            await asyncio.wait(self._settling, timeout=self._settings.broker_timeout_s)

    async def _cancel_consumer(self) -> None:
        channel, tag = self._consuming_on, self._consumer_tag
        self._consuming_on = self._consumer_tag = None
        if channel is not None and tag is not None:
            await self._cancel(channel, tag)

    async def _cancel(self, channel: aiormq.abc.AbstractChannel, tag: str) -> None:
        if channel.is_closed:
            return  # a closed channel has no consumer left; its unacknowledged messages are back in the queue
        timeout_s = self._settings.broker_timeout_s
        try:
            await within(channel.basic_cancel(tag, timeout=timeout_s), timeout_s)
        except _BROKER_ERRORS as error:
            log.warning("broker_cancel_failed", error=repr(error))

    async def close(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
        await self.bindings.stop()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            if self._queue_delete_sent:
                wait_less_for_close_ok(connection)
            try:
                await asyncio.wait_for(connection.close(), self._settings.broker_timeout_s)
            except _BROKER_ERRORS as error:
                log.warning("broker_close_failed", error=repr(error))

    async def delete_queue(self) -> None:
        """One request removes the queue with all its bindings: unbinding 15,000 topics one by one would take
        RabbitMQ longer than a graceful stop may last. The request is sent without waiting for its answer:
        RabbitMQ goes on deleting 15,000 bindings for seconds, and once it has the request it finishes the
        deletion whether or not this connection is still open. If it cannot be sent, the queue expires after
        NOTIFIER_QUEUE_EXPIRES_S, and its bindings with it."""
        if self._connection is None or not self.connected:
            return
        await self.bindings.stop_sending(QUIET_BINDINGS_WAIT_S)
        try:
            channel = await (await self._connection.channel()).get_underlay_channel()
            await channel.queue_delete(self.queue_name, nowait=True)
        except _BROKER_ERRORS as error:
            log.warning("broker_queue_delete_failed", queue=self.queue_name, error=repr(error))
            return
        self._queue_delete_sent = True
        log.info("broker_queue_delete_sent", queue=self.queue_name)

    async def caught_up(self, timeout_s: float) -> None:
        if not self.ready or self._stopped_consuming:
            raise BrokerUnavailable("not consuming from RabbitMQ")
        await self.catch_up.wait(timeout_s)

    async def _send_marker(self, token: str) -> None:
        exchange = self._own_queue_exchange
        if exchange is None or not self.connected:
            raise BrokerUnavailable("not connected to RabbitMQ")
        timeout_s = self._settings.broker_timeout_s
        marker = aio_pika.Message(b"", message_id=token, type=CATCH_UP_MARKER)
        await within(exchange.publish(marker, routing_key=self.queue_name, timeout=timeout_s), timeout_s)

    async def bind(self, topic: str) -> None:
        if not self.ready:
            raise BrokerUnavailable("not connected to RabbitMQ")
        await self.bindings.bind(topic)

    async def unbind(self, topic: str) -> None:
        self.bindings.unbind(topic)

    async def _start_bindings(self, connection: AbstractRobustConnection) -> None:
        channels = [_underlay(await connection.channel()) for _ in range(BIND_CHANNELS + 2)]
        await self.bindings.stop()  # from an earlier attempt to connect
        self.bindings.start(channels[:BIND_CHANNELS], unbind_channel=channels[-2], cover_channel=channels[-1])

    async def publish(self, topic: str, data: bytes, event_id: str) -> None:
        if self._publish_exchange is None or not self.connected:
            raise PublishNotSent("not connected to RabbitMQ")
        message = event_message(data, event_id)
        if self._pending_publishes >= self._settings.max_pending_publishes:
            # RabbitMQ is slow to confirm: refuse at once rather than pile up requests that wait.
            raise PublishNotSent(
                f"{self._pending_publishes} publishes are already waiting for RabbitMQ's confirm "
                "(NOTIFIER_MAX_PENDING_PUBLISHES)"
            )
        self._pending_publishes += 1
        timeout_s = self._settings.broker_timeout_s
        try:
            # With publisher confirms on, this returns only once RabbitMQ has taken the message.
            await within(self._publish_exchange.publish(message, routing_key=topic, timeout=timeout_s), timeout_s)
        except _BROKER_ERRORS as error:
            raise BrokerUnavailable(f"publish not confirmed: {error!r}") from None
        finally:
            self._pending_publishes -= 1

    def _on_delivery(self, message: DeliveredMessage) -> None:
        delivery: aiormq.spec.Basic.Deliver = message.delivery  # type: ignore[assignment]  # what a consumer gets
        channel = message.channel
        tag: int = delivery.delivery_tag  # type: ignore[assignment]  # always set on a delivery
        properties = message.header.properties
        if not delivery.exchange and properties.message_type == CATCH_UP_MARKER:
            self.catch_up.seen(properties.message_id)  # ours, or one sent before a restart: never an event
            self._ack_after_burst(channel, tag)
            return
        on_event = self._on_event
        if on_event is None:  # stopping: leave it for this queue's next consumer
            self._in_order.requeue(channel, tag)
            self._wait_for_on_stop(self._in_order.sender)
            return
        topic = delivery.routing_key or ""
        timestamp = properties.timestamp
        try:
            event = event_from_message(
                topic,
                message.body,
                event_id=properties.message_id,
                ts_ms=publish_time_ms(properties.headers, timestamp.timestamp() if timestamp else None),
                max_bytes=self._settings.max_event_bytes,
                content_encoding=properties.content_encoding,
            )
        except UnusableMessage as error:
            self.dead_lettered += 1
            log.warning("event_dead_lettered", topic=topic, event_id=properties.message_id, reason=str(error))
            self._dead_lettering += 1
            self._settle_soon(self._dead_letter(message, tag, str(error)))
            return
        if delivery.redelivered and event.id in self._handed_off:
            # Handed off before the channel closed, with its acknowledgement still unsent: not twice.
            self.redeliveries_dropped += 1
            self._ack_after_burst(channel, tag)
            return
        on_event(event)
        self._handed_off.add(event.id)
        self._ack_after_burst(channel, tag)

    async def _dead_letter(self, message: DeliveredMessage, tag: int, reason: str) -> None:
        """Republish an unusable message to the dead-letter exchange with the reason in a header, then ack it;
        if that cannot be confirmed, reject it so RabbitMQ dead-letters it without the reason."""
        properties = message.header.properties
        routing_key: str = message.routing_key or ""
        try:
            if self._dead_letter_exchange is None:
                raise BrokerUnavailable("not connected to RabbitMQ")
            headers = dict(properties.headers or {})
            headers[ERROR_HEADER] = reason[:ERROR_HEADER_MAX_CHARS]
            copy = aio_pika.Message(
                message.body,
                headers=headers,
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
                message_id=properties.message_id,
                timestamp=properties.timestamp,
                type=properties.message_type,
                app_id=properties.app_id,
                correlation_id=properties.correlation_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await self._dead_letter_exchange.publish(
                copy, routing_key=routing_key, timeout=self._settings.broker_timeout_s
            )
        except (*_BROKER_ERRORS, BrokerUnavailable) as error:
            log.warning("dead_letter_republish_failed", event_id=properties.message_id, error=repr(error))
            await self._settle(message.channel.basic_reject(tag, requeue=False))
        else:
            await self._settle(message.channel.basic_ack(tag))
        finally:
            self._dead_lettering -= 1
            if not self._dead_lettering:
                self._flush_acks()

    def _ack_after_burst(self, channel: aiormq.abc.AbstractChannel, tag: int) -> None:
        """Acknowledge handed-off messages with one `multiple` ack per burst rather than one ack each.

        A message handed off but not yet acknowledged when the connection drops is redelivered.
        """
        if channel is not self._ack_channel:
            self._flush_acks()  # a tag of the channel before a reconnect is never sent on the new one
        self._ack_channel = channel
        self._ack_tag = tag
        self._unacked += 1
        if self._unacked >= ACK_BATCH:
            self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._flush_acks)

    def _flush_acks(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        channel = self._ack_channel
        if channel is None or self._dead_lettering:
            return  # a dead letter in flight flushes when it is settled
        self._ack_channel = None
        self._unacked = 0
        if channel.is_closed:
            return  # its messages are redelivered on the reopened channel
        self._in_order.ack_up_to(channel, self._ack_tag)
        self._wait_for_on_stop(self._in_order.sender)

    def _settle_soon(self, step: Coroutine[Any, Any, None]) -> None:
        """Run `step` (a dead letter) in a task that stopping waits for."""
        self._wait_for_on_stop(asyncio.ensure_future(step))

    def _wait_for_on_stop(self, task: asyncio.Future[None] | None) -> None:
        if task is not None and task not in self._settling:
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle(self, settlement: Any) -> None:
        try:
            await settlement
        except _BROKER_ERRORS as error:
            # The channel closed under us: RabbitMQ redelivers the message after the reconnect.
            log.info("broker_settle_failed", error=repr(error))

    async def _after_reconnect(self, *_: object) -> None:
        """Counted and logged; the bindings are the routing's restore to bring back (`_restore_routing`, which
        the reopened consume channel starts), once it knows whether the queue is the same one."""
        self.reconnects += 1
        log.info("broker_reconnected", queue=self.queue_name, reconnects=self.reconnects)


class AmqpBindChannel:
    """A BindChannel on an aiormq channel.

    aiormq runs every request, `nowait` ones too, as a task of its own that takes the channel's lock: a few
    event loop iterations per bind. In a storm each iteration handles dozens of handshakes, so 255 binds sent
    one by one would take seconds. The `nowait` binds of a batch go out as one write instead.
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        if not isinstance(channel, aiormq.Channel):
            raise TypeError(f"an aiormq.Channel is needed to write frames, not {type(channel).__name__}")
        self._channel = channel

    async def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._channel.queue_bind(queue, exchange, routing_key=routing_key)

    async def queue_bind_nowait(self, queue: str, exchange: str, routing_keys: list[str]) -> None:
        channel = self._channel
        if channel.is_closed:
            raise BrokerUnavailable("channel closed")
        frames = [spec.Queue.Bind(queue=queue, exchange=exchange, routing_key=key, nowait=True) for key in routing_keys]
        # Only this sender uses the channel and a nowait bind gets no answer: nothing to wait for but the queue.
        await write_frames(channel, frames)

    async def queue_unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        await self._channel.queue_unbind(queue, exchange, routing_key=routing_key)


def _underlay(channel: AbstractRobustChannel) -> ChannelSource:
    """The robust channel's current underlying channel (a new one after each reconnect)."""

    async def source() -> AmqpBindChannel:
        return AmqpBindChannel(await channel.get_underlay_channel())

    return source


async def _plain_channel(connection: AbstractRobustConnection) -> aiormq.abc.AbstractChannel:
    """A channel of the current connection that aio-pika does not restore after a reconnect."""
    transport = connection.transport
    if transport is None:
        raise BrokerUnavailable("not connected")
    return await transport.connection.channel()


def _node_down(error: BaseException) -> bool:
    """RabbitMQ's NOT_FOUND for a queue whose node is down ("home node ... is down or inaccessible"), as opposed
    to a queue that does not exist."""
    return "down or inaccessible" in str(error)
