"""One event as an AMQP message, the way notifier publishes it: JSON data, the event id as `message_id`, the
publish time in milliseconds in a header and as the timestamp, and persistent, so a durable queue keeps it
across a broker restart. `notifier publish --amqp` and the AMQP broker's `publish` (behind `POST /api/publish`)
both build their messages here (tests/test_cli.py compares them)."""

from __future__ import annotations

import datetime

import aio_pika

from notifier.formats.events import TIMESTAMP_MS_HEADER, now_ms


def event_message(data: bytes, event_id: str, sent_ms: int | None = None) -> aio_pika.Message:
    """The message of one event; `data` is its JSON text, `sent_ms` the publish time (default: now)."""
    if sent_ms is None:
        sent_ms = now_ms()
    return aio_pika.Message(
        data,
        content_type="application/json",
        message_id=event_id,
        headers={TIMESTAMP_MS_HEADER: sent_ms},
        timestamp=datetime.datetime.fromtimestamp(sent_ms / 1000, datetime.UTC),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
