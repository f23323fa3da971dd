"""An event on its way from the broker to browsers, and the checks that make a message one."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson

from notifier.topics import InvalidTopic, validate_topic


class UnusableMessage(Exception):
    """A broker message that cannot become an event; the message says why (it is logged and dead-lettered)."""


@dataclass(frozen=True)
class Event:
    topic: str
    id: str
    data: bytes  # the event's data as validated JSON text, spliced into each frame unchanged
    ts_ms: int  # when the event was published, in milliseconds since the Unix epoch
    stamped: bool = False  # True if `ts_ms` came from the publisher (AMQP timestamp), not from our clock


def new_event_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event_from_message(topic: str, body: bytes, *, event_id: str | None, ts_ms: int | None, max_bytes: int) -> Event:
    """Check a broker message and turn it into an Event, or raise UnusableMessage saying why."""
    try:
        validate_topic(topic)
    except InvalidTopic as error:
        raise UnusableMessage(f"bad topic: {error}") from None
    if len(body) > max_bytes:
        raise UnusableMessage(f"body is {len(body)} bytes, over the limit of {max_bytes}")
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise UnusableMessage(f"body is not JSON: {error}") from None
    return Event(
        topic=topic,
        id=event_id or new_event_id(),
        data=body.strip(),
        ts_ms=ts_ms or now_ms(),
        stamped=ts_ms is not None,
    )
