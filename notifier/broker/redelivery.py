"""Which events this instance handed off last, so that RabbitMQ's redelivery of one is not handed off twice.

Acknowledgements go to RabbitMQ in bursts (notifier/broker/amqp.py). When the consume channel closes between
an event's hand-off and the burst that acknowledges it, RabbitMQ delivers the event again, marked
`redelivered`, once the channel is back. Only an unacknowledged event is redelivered, and at most
NOTIFIER_PREFETCH are ever unacknowledged, all of them among the last ones handed off: so the ids of the last
few prefetch-fulls are enough to know every copy that was handed off already.

Recording an id is one list store per delivery; the lookup, a scan, runs only for a redelivered message.
"""

from __future__ import annotations

# How many prefetch-fulls of ids are kept: the unacknowledged ones are at most one, the rest is margin.
PREFETCHES_KEPT = 2


class RecentHandOffs:
    """The ids of the last `size` events handed off, in a ring."""

    __slots__ = ("_next", "_ring")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._ring: list[str | None] = [None] * size
        self._next = 0

    def add(self, event_id: str) -> None:
        self._ring[self._next] = event_id
        self._next = (self._next + 1) % len(self._ring)

    def __contains__(self, event_id: object) -> bool:
        return event_id is not None and event_id in self._ring
