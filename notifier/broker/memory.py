"""An in-process broker with the same contract as RabbitMQ's topic exchange, for dev mode and unit tests."""

from __future__ import annotations

import uuid

import structlog

from notifier.broker.base import BrokerUnavailable, EventHandler, RoutingGapHandler
from notifier.formats.events import UnusableMessage, event_from_message, now_ms

log = structlog.get_logger("notifier.broker")


class MemoryBroker:
    """Delivers a published event synchronously to the handler when its topic is bound, like a direct route."""

    def __init__(self, *, max_event_bytes: int) -> None:
        self._max_event_bytes = max_event_bytes
        self._bound: set[str] = set()
        self._on_event: EventHandler | None = None
        self._connected = False
        self.instance_id = uuid.uuid4().hex[:12]
        self.reconnects = 0
        self.routing_gaps = 0  # an in-process route has no gap
        self.dead_lettered = 0
        self.redeliveries_dropped = 0  # nothing is redelivered in process

    @property
    def ready(self) -> bool:
        return self._connected

    @property
    def bound_topics(self) -> frozenset[str]:
        return frozenset(self._bound)

    async def connect(self, on_event: EventHandler, on_routing_gap: RoutingGapHandler | None = None) -> None:
        self._on_event = on_event
        self._connected = True

    async def stop_consuming(self) -> None:
        self._on_event = None

    async def delete_queue(self) -> None:
        self._bound.clear()

    async def close(self) -> None:
        self._connected = False
        self._on_event = None

    async def caught_up(self, timeout_s: float) -> None:
        """Always: a publish is delivered before it returns."""
        self._require_connection()
        if self._on_event is None:
            raise BrokerUnavailable("memory broker stopped consuming")

    async def bind(self, topic: str) -> None:
        self._require_connection()
        self._bound.add(topic)

    async def unbind(self, topic: str) -> None:
        self._bound.discard(topic)

    async def publish(self, topic: str, data: bytes, event_id: str) -> None:
        self._require_connection()
        if topic not in self._bound or self._on_event is None:
            return
        try:
            event = event_from_message(topic, data, event_id=event_id, ts_ms=now_ms(), max_bytes=self._max_event_bytes)
        except UnusableMessage as error:
            self.dead_lettered += 1
            log.warning("event_dropped", topic=topic, event_id=event_id, reason=str(error))
            return
        self._on_event(event)

    def _require_connection(self) -> None:
        if not self._connected:
            raise BrokerUnavailable("memory broker is closed")
