"""Who on this instance is subscribed to what, and the fan-out of each event to them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import structlog

from notifier.broker import Broker, BrokerUnavailable
from notifier.formats import messages
from notifier.formats.events import Event, now_ms
from notifier.formats.wire import Frame
from notifier.stats import Stats

log = structlog.get_logger("notifier.hub")


class Subscriber(Protocol):
    def offer(self, frame: Frame) -> None:
        """Take one encoded frame without waiting; a subscriber that cannot keep up handles it itself."""


class _TopicGuard:
    """Serializes bind/unbind of one topic; lives only while someone is using it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Hub:
    """Owns topic -> local subscribers. The first subscriber of a topic binds it at the broker, the last one
    to leave unbinds it. Fan-out encodes an event once and offers the same frame to every subscriber."""

    def __init__(self, broker: Broker, stats: Stats | None = None) -> None:
        self._broker = broker
        self._stats = stats or Stats()
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._bound: set[str] = set()
        self._guards: dict[str, _TopicGuard] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def bound_topics(self) -> frozenset[str]:
        return frozenset(self._bound)

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers.get(topic, ()))

    async def subscribe(self, subscriber: Subscriber, topic: str) -> None:
        """Add `subscriber` to `topic`; returns once the broker routes the topic here.

        Raises BrokerUnavailable (and leaves nothing behind) if the binding cannot be made.
        """
        if topic in self._bound and topic not in self._guards:
            # Bound, and no bind or unbind of it under way: join its subscribers without taking its guard (a
            # reconnect storm subscribes thousands of sessions, often to topics already bound).
            self._subscribers[topic].add(subscriber)
            return
        async with self._guard(topic):
            subscribers = self._subscribers.setdefault(topic, set())
            # Registered before the bind, so no event routed after the broker confirms can miss it.
            subscribers.add(subscriber)
            if topic in self._bound:
                return
            try:
                await self._broker.bind(topic)
            except BaseException:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[topic]
                raise
            self._bound.add(topic)

    async def caught_up(self, timeout_s: float) -> None:
        """Return once every event routed to this instance before the call has reached its subscribers;
        BrokerUnavailable if that is not known within `timeout_s`."""
        await self._broker.caught_up(timeout_s)

    def when_caught_up(self, then: Callable[[], None], timeout_s: float) -> None:
        """Call `then` once every event routed here before now has reached the subscribers, or after
        `timeout_s` if that is not known sooner; without waiting for it here."""
        task = asyncio.ensure_future(self._call_when_caught_up(then, timeout_s))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _call_when_caught_up(self, then: Callable[[], None], timeout_s: float) -> None:
        try:
            await self._broker.caught_up(timeout_s)
        except BrokerUnavailable:
            await asyncio.sleep(timeout_s)  # not known: an event still on its way has had that long
        finally:
            then()

    def transfer(self, old: Subscriber, new: Subscriber, topic: str) -> None:
        """Hand `old`'s subscription to `topic` to `new`, at once and without touching the binding: no event is
        routed to neither, none to both."""
        subscribers = self._subscribers.get(topic)
        if subscribers is None or old not in subscribers:
            raise KeyError(f"{topic} is not held by the subscriber handing it over")
        subscribers.discard(old)
        subscribers.add(new)

    async def unsubscribe(self, subscriber: Subscriber, topic: str) -> None:
        """Remove `subscriber` from `topic`; unbinds the topic when its last local subscriber leaves."""
        subscribers = self._subscribers.get(topic)
        if subscribers is None or subscriber not in subscribers:
            return
        subscribers.discard(subscriber)  # at once: no event reaches a subscriber after it left
        async with self._guard(topic):
            if self._subscribers.get(topic) or topic not in self._bound:
                return
            self._subscribers.pop(topic, None)
            self._bound.discard(topic)
            await self._broker.unbind(topic)

    def deliver(self, event: Event) -> None:
        """Hand `event` to every local subscriber of its topic, without awaiting any of them."""
        stats = self._stats
        stats.events_in += 1
        if event.stamped:
            stats.latency.observe((now_ms() - event.ts_ms) / 1000)
        subscribers = self._subscribers.get(event.topic)
        if not subscribers:
            return
        frame = Frame(messages.event(event), event.topic, event.id)
        for subscriber in subscribers:
            subscriber.offer(frame)
        stats.frames_out += len(subscribers)

    @contextlib.asynccontextmanager
    async def _guard(self, topic: str) -> AsyncIterator[None]:
        guard = self._guards.get(topic)
        if guard is None:
            guard = self._guards[topic] = _TopicGuard()
        guard.users += 1
        try:
            async with guard.lock:
                yield
        finally:
            guard.users -= 1
            if guard.users == 0:
                del self._guards[topic]
