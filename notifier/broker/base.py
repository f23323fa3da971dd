"""The broker contract: the hub and the HTTP API talk to RabbitMQ (or the in-memory stand-in) only through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from notifier.formats.events import Event

EventHandler = Callable[[Event], None]
"""Called once per incoming event; it must hand the event off without awaiting any client.
The broker acknowledges the message when the handler returns."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now; the operation may succeed later."""


class Broker(Protocol):
    instance_id: str
    """Names this instance (its queue, its session ids)."""
    reconnects: int
    """How many times the connection was restored after a loss."""
    dead_lettered: int
    """Messages refused as unusable (dead-lettered by RabbitMQ)."""

    @property
    def ready(self) -> bool:
        """True while the broker connection is up."""

    async def connect(self, on_event: EventHandler) -> None:
        """Connect, declare what the service needs, and start delivering events to `on_event`."""

    async def stop_consuming(self) -> None:
        """Stop taking new events; unacknowledged ones go back to the queue."""

    async def close(self) -> None:
        """Disconnect."""

    async def delete_queue(self) -> None:
        """Delete this instance's queue, and with it all its bindings; once consuming has stopped."""

    async def bind(self, topic: str) -> None:
        """Route `topic` to this instance; returns once the broker confirmed it."""

    async def unbind(self, topic: str) -> None:
        """Stop routing `topic` to this instance."""

    async def publish(self, topic: str, data: bytes, event_id: str) -> None:
        """Publish JSON `data` on `topic`; returns once the broker confirmed it has the event."""
