"""The broker contract: the hub and the HTTP API talk to RabbitMQ (or the in-memory stand-in) only through it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import aiormq

from notifier.formats.events import Event

EventHandler = Callable[[Event], None]
"""Called once per incoming event; it must hand the event off without awaiting any client.
The broker acknowledges the message when the handler returns."""


RoutingGapHandler = Callable[[str], None]
"""Called once routing is restored after a gap in which events routed to this instance may have been lost (its
queue was replaced: the node that held it was lost, or it was deleted), with the reason. The instance tells
its clients (`resync`)."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now; the operation may succeed later."""


class PublishNotSent(BrokerUnavailable):
    """A publish refused before it was sent (not connected, or too many publishes awaiting confirms): RabbitMQ
    never saw it. The message says which."""


class BrokerUnreachable(BrokerUnavailable):
    """A connection attempt failed; the attempt's log line already said why."""


# What aio-pika and aiormq raise when the connection or channel is gone or the broker refuses; the AMQP broker
# and the AMQP control plane catch these and nothing broader.
BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, asyncio.TimeoutError)


class Broker(Protocol):
    instance_id: str
    """Names this instance (its queue, its session ids)."""
    reconnects: int
    """How many times the connection was restored after a loss."""
    routing_gaps: int
    """How many times routing was restored on a new queue, with events possibly lost in the gap."""
    dead_lettered: int
    """Messages refused as unusable (dead-lettered by RabbitMQ)."""
    redeliveries_dropped: int
    """Redelivered copies of events already handed off (their acknowledgement was lost with a channel)."""

    @property
    def ready(self) -> bool:
        """True while events reach this instance: connected, and its topics routed to it."""

    async def connect(self, on_event: EventHandler, on_routing_gap: RoutingGapHandler | None = None) -> None:
        """Connect, declare what the service needs, and start delivering events to `on_event`; call
        `on_routing_gap` whenever events may have been lost on the way here."""

    async def stop_consuming(self) -> None:
        """Stop taking new events; unacknowledged ones go back to the queue."""

    async def close(self) -> None:
        """Disconnect."""

    async def delete_queue(self) -> None:
        """Delete this instance's queue, and with it all its bindings; once consuming has stopped."""

    async def caught_up(self, timeout_s: float) -> None:
        """Return once every event routed to this instance before the call has been handed to the event
        handler; BrokerUnavailable if that is not known within `timeout_s` (or events are not being consumed)."""

    async def bind(self, topic: str) -> None:
        """Route `topic` to this instance; returns once the broker confirmed it."""

    async def unbind(self, topic: str) -> None:
        """Stop routing `topic` to this instance."""

    async def publish(self, topic: str, data: bytes, event_id: str) -> None:
        """Publish JSON `data` on `topic`; returns once the broker confirmed it has the event."""
