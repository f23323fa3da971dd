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
- in a storm (NOTIFIER_BIND_COVER_AT binds waiting), a client does not wait for its own bind: one binding
  `<first word>.#` (a "cover", e.g. `user.#`) routes the whole namespace here at once, the client is
  welcomed as soon as the cover is confirmed, and its own bind follows at the broker's pace. RabbitMQ copies a
  message once per queue however many of its bindings match, so nothing arrives twice, and the hub drops the
  events no local client holds. The cover is removed once every bind it stood in for is confirmed.
- once every waiting bind is stood in for by a confirmed cover, none of them is urgent: they go out on one
  channel only, a batch at a time, instead of on all, and after each batch the sender rests twice as long as
  RabbitMQ took to confirm it. RabbitMQ's CPU is then left to what is urgent (routing events, other
  namespaces' and other instances' binds, and, where they share a machine, this instance's handshakes), and
  the cover stands a while longer.
"""

from __future__ import annotations

import asyncio
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from notifier.broker.base import BrokerUnavailable

log = structlog.get_logger("notifier.broker")


class BindChannel(Protocol):
    """The requests the bindings send on one channel."""

    async def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Bind and wait for RabbitMQ's answer."""

    async def queue_bind_nowait(self, queue: str, exchange: str, routing_keys: list[str]) -> None:
        """Send one `nowait` bind per routing key, back to back, without waiting for anything."""

    async def queue_unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Unbind and wait for RabbitMQ's answer."""


ChannelSource = Callable[[], Awaitable[BindChannel]]


# How long to wait before sending again after a request failed (the robust connection is reconnecting).
RETRY_S = 0.5
# How often a restore of routing looks whether every wanted topic is bound again.
ALL_BOUND_POLL_S = 0.05
# How often a sender that stands aside while covers make every waiting bind background work looks again.
COVERED_POLL_S = 0.05
# After a batch of binds that covers stood in for, the sender rests this many times as long as RabbitMQ took
# to confirm it: such binds take at most a third of the broker's time while the storm goes on.
COVERED_PAUSE_RATIO = 2.0

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
        cover_at: int = 0,
        max_covers: int = 0,
    ) -> None:
        self._queue = queue
        self._exchange = exchange
        self._wait_s = wait_s
        self._max_waiting = max_waiting
        self._linger_s = linger_s
        self._batch = batch
        self._cover_at = cover_at
        self._max_covers = max_covers
        self._wanted: set[str] = set()
        self._confirmed: set[str] = set()  # bound at RabbitMQ, confirmed since the last (re)connect
        self._maybe_bound: set[str] = set()  # may be bound at RabbitMQ: what an unbind must cover
        # Insertion-ordered sets: the oldest request goes first.
        self._to_bind: dict[str, None] = {}
        self._to_unbind: dict[str, None] = {}
        self._lingering: dict[str, float] = {}  # topic -> when to unbind it; in deadline order
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._waiting_by_namespace: dict[str, int] = {}  # unconfirmed binds of each namespace
        self._covers: dict[str, asyncio.Future[None]] = {}  # namespace -> done once its cover is bound
        self._cover_channel: ChannelSource | None = None
        self._cover_tasks: set[asyncio.Task[None]] = set()
        self._bind_work = asyncio.Event()
        self._unbind_work = asyncio.Event()
        self._unbinding: str | None = None  # the topic whose unbind is in flight: its bind must wait for it
        self._tasks: list[asyncio.Task[None]] = []
        # Set once the queue is about to be deleted with every binding: nothing more is sent.
        self._quiet = asyncio.Event()
        self._requests_in_flight = 0
        self._covered_pause_until = 0.0
        self.binds_sent = 0
        self.unbinds_sent = 0
        self.binds_refused = 0
        self.covers_bound = 0

    @property
    def waiting(self) -> int:
        """Binds not yet confirmed (queued or in flight)."""
        return len(self._confirmations)

    @property
    def maybe_bound(self) -> frozenset[str]:
        return frozenset(self._maybe_bound)

    @property
    def covers(self) -> frozenset[str]:
        """The namespaces routed here whole right now, because a storm of binds is waiting."""
        return frozenset(self._covers)

    def start(
        self, bind_channels: list[ChannelSource], unbind_channel: ChannelSource, cover_channel: ChannelSource
    ) -> None:
        """Start one sender per bind channel, one for unbinds and one for lingering topics; covers are bound
        on `cover_channel`, so that they never queue behind a batch of binds."""
        self._cover_channel = cover_channel
        self._tasks = [
            asyncio.create_task(self._send_binds(channel, urgent_only=index > 0), name="bind-sender")
            for index, channel in enumerate(bind_channels)
        ]
        self._tasks.append(asyncio.create_task(self._send_unbinds(unbind_channel), name="unbind-sender"))
        self._tasks.append(asyncio.create_task(self._expire_lingering(), name="binding-linger"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._cover_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        for future in (*self._confirmations.values(), *self._covers.values()):
            if not future.done():
                future.set_exception(BrokerUnavailable("broker closed"))
                future.exception()  # retrieved: a caller that already gave up must not cause a warning
        self._confirmations.clear()
        self._waiting_by_namespace.clear()
        self._covers.clear()

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
            future = self._add_waiting(topic)
            self._to_bind[topic] = None
            self._bind_work.set()
        self._wanted.add(topic)
        cover = self._cover_for(topic)
        if cover is not None and not future.done() and _is_bound(cover):
            return  # routed here by the cover already; the topic's own bind follows
        # asyncio.wait neither cancels the futures nor the requests behind them when the time is up.
        deadline = time.monotonic() + self._wait_s
        if cover is not None and not future.done():
            await asyncio.wait([future, cover], timeout=self._wait_s, return_when=FIRST_COMPLETED)
            if not future.done() and _is_bound(cover):
                return  # routed here by the cover; the topic's own bind follows
            # Otherwise out of time, or the broker went away under the cover: it is the bind itself or nothing.
        if not future.done():
            await asyncio.wait([future], timeout=max(0.0, deadline - time.monotonic()))
        if not future.done():
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

    async def stop_sending(self, timeout_s: float) -> None:
        """Send nothing more: the queue is about to be deleted, and its bindings with it. Waits (at most
        `timeout_s`) for the requests already sent, so that none is cancelled half-way when the instance
        stops: aio-pika closes the channel of a cancelled request, and with RabbitMQ busy deleting thousands
        of bindings that close can hold the process for seconds."""
        self._quiet.set()
        deadline = time.monotonic() + timeout_s
        while self._requests_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(ALL_BOUND_POLL_S)

    async def _sending(self) -> None:
        """Before each request: once sending has stopped, wait here until the senders are cancelled."""
        if self._quiet.is_set():
            await asyncio.Future()  # never done: a sender rests here, with nothing in flight, until stopped

    @property
    def queue(self) -> str:
        return self._queue

    def move_to(self, queue: str) -> None:
        """The queue was replaced by a new one named `queue` (the old one's node was lost): bind every wanted
        topic to it. The old queue's bindings go with the old queue."""
        self._queue = queue
        self._maybe_bound.clear()
        self.after_reconnect()

    def all_bound(self) -> bool:
        """Every wanted topic is confirmed bound to the current queue since the last (re)connect."""
        return self._wanted <= self._confirmed

    async def wait_all_bound(self, timeout_s: float) -> bool:
        """Wait until every wanted topic is bound again after a reconnect or a move; False if out of time."""
        deadline = time.monotonic() + timeout_s
        while not self.all_bound():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(ALL_BOUND_POLL_S)
        return True

    def after_reconnect(self) -> None:
        """The queue may have been re-declared empty: bind every wanted topic again, and unbind the rest."""
        self._confirmed.clear()
        for namespace, cover in list(self._covers.items()):
            if cover.done():  # bound before the loss: not to be relied on until it is bound again
                self._covers[namespace] = self._send_cover(namespace)
        for topic in self._wanted:
            if _is_cover(topic):
                continue  # sent again by its own request above, or retired
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
            future = self._settle_waiting(topic)
            if future is not None and not future.done():
                future.cancel()
            self._retire_covers()

    def _add_waiting(self, topic: str) -> asyncio.Future[None]:
        future = self._confirmations[topic] = asyncio.get_running_loop().create_future()
        namespace = _namespace(topic)
        self._waiting_by_namespace[namespace] = self._waiting_by_namespace.get(namespace, 0) + 1
        return future

    def _settle_waiting(self, topic: str) -> asyncio.Future[None] | None:
        future = self._confirmations.pop(topic, None)
        if future is not None:
            namespace = _namespace(topic)
            left = self._waiting_by_namespace[namespace] - 1
            if left:
                self._waiting_by_namespace[namespace] = left
            else:
                del self._waiting_by_namespace[namespace]
        return future

    # Covers.

    def _cover_for(self, topic: str) -> asyncio.Future[None] | None:
        """The cover of `topic`'s namespace: the one in place, or a new one when a storm is on."""
        namespace = _namespace(topic)
        cover = self._covers.get(namespace)
        if cover is not None:
            return cover
        if not self._cover_at or len(self._confirmations) < self._cover_at or len(self._covers) >= self._max_covers:
            return None
        pattern = _cover_pattern(namespace)
        self._wanted.add(pattern)
        self._lingering.pop(pattern, None)
        self._to_unbind.pop(pattern, None)
        if pattern in self._confirmed:  # its unbind had not been sent yet
            cover = self._covers[namespace] = asyncio.get_running_loop().create_future()
            cover.set_result(None)
        else:
            cover = self._covers[namespace] = self._send_cover(namespace)
        log.info("bind_cover_on", pattern=pattern, binds_waiting=len(self._confirmations))
        return cover

    def _send_cover(self, namespace: str) -> asyncio.Future[None]:
        cover: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._bind_cover(namespace, cover), name="bind-cover")
        self._cover_tasks.add(task)
        task.add_done_callback(self._cover_tasks.discard)
        return cover

    async def _bind_cover(self, namespace: str, cover: asyncio.Future[None]) -> None:
        pattern = _cover_pattern(namespace)
        assert self._cover_channel is not None, "start() first"
        while self._covers.get(namespace) is cover:
            if self._unbinding == pattern:  # the unbind of an earlier cover is in flight: bind after it
                await asyncio.sleep(0.01)
                continue
            await self._sending()
            self._maybe_bound.add(pattern)
            queue = self._queue
            self._requests_in_flight += 1
            try:
                channel = await self._cover_channel()
                await channel.queue_bind(queue, self._exchange, routing_key=pattern)
                if queue != self._queue:
                    raise BrokerUnavailable(f"bound to {queue}, which was replaced meanwhile")
            except (*_REQUEST_ERRORS, BrokerUnavailable) as error:
                log.warning("broker_bind_failed", topics=1, error=repr(error))
                await asyncio.sleep(RETRY_S)
                continue
            finally:
                self._requests_in_flight -= 1
            self.covers_bound += 1
            self._confirmed.add(pattern)
            if not cover.done():
                cover.set_result(None)
            self._retire_covers()  # the binds it stood in for may all be confirmed already
            return

    def _retire_covers(self) -> None:
        """Remove every bound cover whose namespace has no bind waiting any more: each topic in it is bound
        on its own now."""
        for namespace, cover in list(self._covers.items()):
            if namespace in self._waiting_by_namespace or not cover.done():
                continue
            del self._covers[namespace]
            pattern = _cover_pattern(namespace)
            self._wanted.discard(pattern)
            self._queue_unbind(pattern)  # no lingering: a cover is for the storm only
            log.info("bind_cover_off", pattern=pattern)

    def _queue_unbind(self, topic: str) -> None:
        self._to_unbind[topic] = None
        self._unbind_work.set()

    def _all_covered(self) -> bool:
        """Every bind waiting is stood in for by a confirmed cover: none of them is urgent."""
        covers = self._covers
        for namespace in self._waiting_by_namespace:
            cover = covers.get(namespace)
            if cover is None or not _is_bound(cover):
                return False
        return True

    async def _send_binds(self, channel_source: ChannelSource, *, urgent_only: bool) -> None:
        """Send batches of binds on one channel; with `urgent_only`, stand aside while covers make every
        waiting bind background work (the first sender alone sends those)."""
        while True:
            await self._bind_work.wait()
            if not self._to_bind:
                self._bind_work.clear()
                continue
            covered = bool(self._covers) and self._all_covered()
            if urgent_only and covered:
                await asyncio.sleep(COVERED_POLL_S)
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
            await self._sending()
            if covered:
                pause = self._covered_pause_until - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(min(pause, COVERED_POLL_S))
                    continue
            for topic in batch:
                del self._to_bind[topic]
            self._maybe_bound.update(batch)
            sent_at = time.monotonic()
            queue = self._queue
            self._requests_in_flight += 1
            try:
                channel = await channel_source()
                if len(batch) > 1:
                    await channel.queue_bind_nowait(queue, self._exchange, batch[:-1])
                # The barrier: RabbitMQ answers it after every bind sent before it on this channel.
                await channel.queue_bind(queue, self._exchange, routing_key=batch[-1])
                if queue != self._queue:
                    raise BrokerUnavailable(f"bound to {queue}, which was replaced meanwhile")
            except (*_REQUEST_ERRORS, BrokerUnavailable) as error:
                log.warning("broker_bind_failed", topics=len(batch), error=repr(error))
                for topic in batch:
                    if topic in self._wanted or topic in self._confirmations:
                        self._to_bind.setdefault(topic, None)
                    else:
                        self._queue_unbind(topic)
                await asyncio.sleep(RETRY_S)
                continue
            finally:
                self._requests_in_flight -= 1
            self.binds_sent += len(batch)
            took = time.monotonic() - sent_at
            log.debug("binds_confirmed", topics=len(batch), seconds=round(took, 3), covered=covered)
            if covered:
                self._covered_pause_until = time.monotonic() + took * COVERED_PAUSE_RATIO
            for topic in batch:
                self._confirmed.add(topic)
                future = self._settle_waiting(topic)
                if future is not None and not future.done():
                    future.set_result(None)
                if topic not in self._wanted:  # its caller gave up meanwhile
                    self._queue_unbind(topic)
            if self._covers:
                self._retire_covers()

    async def _send_unbinds(self, channel_source: ChannelSource) -> None:
        while True:
            await self._unbind_work.wait()
            if not self._to_unbind:
                self._unbind_work.clear()
                continue
            await self._sending()
            topic = next(iter(self._to_unbind))
            del self._to_unbind[topic]
            if topic in self._wanted or topic in self._to_bind:
                continue  # wanted again meanwhile
            self._confirmed.discard(topic)
            self._unbinding = topic
            self._requests_in_flight += 1
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
                self._requests_in_flight -= 1
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


def _namespace(topic: str) -> str:
    return topic.split(".", 1)[0]


def _cover_pattern(namespace: str) -> str:
    """`user.#` matches `user` and every `user.<...>`: RabbitMQ's `#` matches zero or more words."""
    return f"{namespace}.#"


def _is_bound(cover: asyncio.Future[None]) -> bool:
    """Whether RabbitMQ confirmed `cover` (not still on its way, nor failed with the broker gone)."""
    return cover.done() and not cover.cancelled() and cover.exception() is None


def _is_cover(topic: str) -> bool:
    return topic.endswith(".#")  # a topic a client holds never contains `#` (notifier/topics.py)
