"""Keeps the bindings of this instance's queue at RabbitMQ in step with the topics its clients hold.

Binding is the broker-wide bottleneck of a reconnect storm: RabbitMQ creates and deletes bindings one after
the other, for every instance at once. So:

- a bind is urgent (a client waits for its welcome), an unbind never is (an event routed here for a topic no
  one holds any more is dropped here). Binds are sent in pipelined batches: `nowait` binds and one
  confirmed bind as a barrier, since RabbitMQ answers a channel's requests in order. Unbinds go one at a time
  on their own channel, after the topic lingered NOTIFIER_BIND_LINGER_S unused (a returning user needs no
  bind), and a bind and an unbind of one topic that meet in the queue cancel out.
- a request sent to RabbitMQ is never cancelled: aio-pika closes a channel whose request was cancelled, and
  every later request on it would fail. A caller waits for its bind a bounded time
  (NOTIFIER_BIND_WAIT_S) and then gives up alone; the bind still completes, and since no one wants the
  topic any more it is unbound again.
- a failed request (connection lost, channel closed) leaves its topics "maybe bound"; they are sent again
  once the connection is back, so no binding is left behind and none is missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiormq
import structlog

from notifier.broker.base import BrokerUnavailable

log = structlog.get_logger("notifier.broker")

ChannelSource = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]

# How long to wait before sending again after a request failed (the robust connection is reconnecting).
RETRY_S = 0.5

# A sender must outlive any failure of one request (a dead sender would leave every later bind waiting), so
# it catches every Exception: it logs it, keeps the topics for the next attempt and sends again after RETRY_S.
_REQUEST_ERRORS = (Exception,)


class Bindings:
    """The wanted topics of one queue, and the tasks that make RabbitMQ's bindings match them."""

    def __init__(
        self,
        queue: str,
        exchange: str,
        *,
        wait_s: float,
        max_waiting: int,
        linger_s: float,
        batch: int,
    ) -> None:
        self._queue = queue
        self._exchange = exchange
        self._wait_s = wait_s
        self._max_waiting = max_waiting
        self._linger_s = linger_s
        self._batch = batch
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()  # bound at RabbitMQ, confirmed since the last (re)connect
        self._maybe_bound: set[str] = set()  # may be bound at RabbitMQ: what an unbind must cover
        # Insertion-ordered sets: the oldest request goes first.
        self._to_bind: dict[str, None] = {}
        self._to_unbind: dict[str, None] = {}
        self._lingering: dict[str, float] = {}  # topic -> when to unbind it; in deadline order
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._bind_work = asyncio.Event()
        self._unbind_work = asyncio.Event()
        self._unbinding: str | None = None  # the topic whose unbind is in flight: its bind must wait for it
        self._tasks: list[asyncio.Task[None]] = []
        self.binds_sent = 0
        self.unbinds_sent = 0
        self.binds_refused = 0

    @property
    def waiting(self) -> int:
        """Binds not yet confirmed (queued or in flight)."""
        return len(self._confirmations)

    @property
    def maybe_bound(self) -> frozenset[str]:
        return frozenset(self._maybe_bound)

    def start(self, bind_channels: list[ChannelSource], unbind_channel: ChannelSource) -> None:
        """Start one sender per bind channel, one for unbinds and one for lingering topics."""
        self._tasks = [asyncio.create_task(self._send_binds(channel), name="bind-sender") for channel in bind_channels]
        self._tasks.append(asyncio.create_task(self._send_unbinds(unbind_channel), name="unbind-sender"))
        self._tasks.append(asyncio.create_task(self._expire_lingering(), name="binding-linger"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for future in self._confirmations.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("broker closed"))
                future.exception()  # retrieved: a caller that already gave up must not cause a warning
        self._confirmations.clear()

    async def bind(self, topic: str) -> None:
        """Return once RabbitMQ routes `topic` to the queue; raise BrokerUnavailable after NOTIFIER_BIND_WAIT_S,
        or at once when NOTIFIER_BIND_QUEUE_SIZE binds are already waiting."""
        self._lingering.pop(topic, None)
        self._to_unbind.pop(topic, None)
        if topic in self._confirmed:
            self._wanted.add(topic)
            return  # still bound: it was lingering, or its unbind had not been sent yet
        future = self._confirmations.get(topic)
        if future is None:
            if len(self._confirmations) >= self._max_waiting:
                self.binds_refused += 1
                raise BrokerUnavailable(f"{len(self._confirmations)} binds already waiting for RabbitMQ")
            future = self._confirmations[topic] = asyncio.get_running_loop().create_future()
            self._to_bind[topic] = None
            self._bind_work.set()
        self._wanted.add(topic)
        # asyncio.wait neither cancels the future nor the request behind it when the time is up.
        done, _ = await asyncio.wait([future], timeout=self._wait_s)
        if not done:
            self._wanted.discard(topic)
            self._give_up(topic)
            raise BrokerUnavailable(f"bind of {topic} not confirmed within {self._wait_s} s")
        if future.cancelled():
            raise BrokerUnavailable(f"bind of {topic} withdrawn")
        future.result()

    def unbind(self, topic: str) -> None:
        """Stop routing `topic` here, after it lingered; never waits."""
        self._wanted.discard(topic)
        self._give_up(topic)
        if topic not in self._maybe_bound:
            return
        if self._linger_s > 0:
            self._lingering.pop(topic, None)  # re-inserted last: the dict stays in deadline order
            self._lingering[topic] = time.monotonic() + self._linger_s
        else:
            self._queue_unbind(topic)

    def after_reconnect(self) -> None:
        """The queue may have been re-declared empty: bind every wanted topic again, and unbind the rest."""
        self._confirmed.clear()
        for topic in self._wanted:
            self._to_bind[topic] = None
        for topic in self._maybe_bound - self._wanted:
            self._to_unbind[topic] = None
        self._bind_work.set()
        self._unbind_work.set()

    def _give_up(self, topic: str) -> None:
        """No one waits for `topic` any more: forget a bind not yet sent (a bind in flight completes and the
        unbind that follows undoes it)."""
        if topic in self._to_bind and topic not in self._wanted:
            del self._to_bind[topic]
            future = self._confirmations.pop(topic, None)
            if future is not None and not future.done():
                future.cancel()

    def _queue_unbind(self, topic: str) -> None:
        self._to_unbind[topic] = None
        self._unbind_work.set()

    async def _send_binds(self, channel_source: ChannelSource) -> None:
        while True:
            await self._bind_work.wait()
            if not self._to_bind:
                self._bind_work.clear()
                continue
            batch = []
            for topic in self._to_bind:
                if topic != self._unbinding:
                    batch.append(topic)
                    if len(batch) >= self._batch:
                        break
            if not batch:  # only a topic whose unbind is in flight: its end sets the event again
                self._bind_work.clear()
                continue
            for topic in batch:
                del self._to_bind[topic]
            self._maybe_bound.update(batch)
            sent_at = time.monotonic()
            try:
                channel = await channel_source()
                for topic in batch[:-1]:
                    await channel.queue_bind(self._queue, self._exchange, routing_key=topic, nowait=True)
                # The barrier: RabbitMQ answers it after every bind sent before it on this channel.
                await channel.queue_bind(self._queue, self._exchange, routing_key=batch[-1])
            except (*_REQUEST_ERRORS, BrokerUnavailable) as error:
                log.warning("broker_bind_failed", topics=len(batch), error=repr(error))
                for topic in batch:
                    if topic in self._wanted or topic in self._confirmations:
                        self._to_bind.setdefault(topic, None)
                    else:
                        self._queue_unbind(topic)
                await asyncio.sleep(RETRY_S)
                continue
            self.binds_sent += len(batch)
            log.debug("binds_confirmed", topics=len(batch), seconds=round(time.monotonic() - sent_at, 3))
            for topic in batch:
                self._confirmed.add(topic)
                future = self._confirmations.pop(topic, None)
                if future is not None and not future.done():
                    future.set_result(None)
                if topic not in self._wanted:  # its caller gave up meanwhile
                    self._queue_unbind(topic)

    async def _send_unbinds(self, channel_source: ChannelSource) -> None:
        while True:
            await self._unbind_work.wait()
            if not self._to_unbind:
                self._unbind_work.clear()
                continue
            topic = next(iter(self._to_unbind))
            del self._to_unbind[topic]
            if topic in self._wanted or topic in self._to_bind:
                continue  # wanted again meanwhile
            self._confirmed.discard(topic)
            self._unbinding = topic
            try:
                channel = await channel_source()
                await channel.queue_unbind(self._queue, self._exchange, routing_key=topic)
            except (*_REQUEST_ERRORS, BrokerUnavailable) as error:
                log.info("broker_unbind_deferred", topic=topic, error=repr(error))
                if topic not in self._wanted:
                    self._to_unbind.setdefault(topic, None)
                await asyncio.sleep(RETRY_S)
                continue
            finally:
                self._unbinding = None
                if self._to_bind:
                    self._bind_work.set()
            self.unbinds_sent += 1
            if topic not in self._wanted:
                self._maybe_bound.discard(topic)

    async def _expire_lingering(self) -> None:
        while True:
            now = time.monotonic()
            while self._lingering:
                topic, deadline = next(iter(self._lingering.items()))
                if deadline > now:
                    break
                del self._lingering[topic]
                if topic not in self._wanted:
                    self._queue_unbind(topic)
            await asyncio.sleep(min(self._linger_s, 0.1) if self._lingering else 0.1)
