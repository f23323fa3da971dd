"""Brokers: `amqp://` (RabbitMQ) and `memory://` (embedded, for dev mode and unit tests)."""

from __future__ import annotations

from notifier.broker.base import (
    Broker,
    BrokerUnavailable,
    BrokerUnreachable,
    EventHandler,
    PublishNotSent,
    RoutingGapHandler,
)
from notifier.settings import Settings

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "BrokerUnreachable",
    "EventHandler",
    "PublishNotSent",
    "RoutingGapHandler",
    "create_broker",
]


def create_broker(settings: Settings) -> Broker:
    """Pick the broker from the URL scheme of NOTIFIER_AMQP_URL."""
    if settings.uses_memory_broker:
        from notifier.broker.memory import MemoryBroker

        return MemoryBroker(max_event_bytes=settings.max_event_bytes)
    from notifier.broker.amqp import AmqpBroker

    return AmqpBroker(settings)
