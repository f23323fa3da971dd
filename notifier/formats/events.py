"""An event on its way from the broker to browsers, and the checks that make a message one."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from notifier.formats.topics import InvalidTopic, validate_topic

# An event id, from the HTTP API's `id` or an AMQP `message_id`: safe to log and to splice into a frame.
EVENT_ID_RE = re.compile(r"[A-Za-z0-9_\-:.@]{1,128}")
EVENT_ID_RULE = "1 to 128 of letters, digits, '_', '-', ':', '.' and '@'"
# The AMQP header publishers set for a millisecond publish time (the `timestamp` property has whole seconds).
TIMESTAMP_MS_HEADER = "timestamp_in_ms"
# Body encodings a publisher may name in `content_encoding` (wbits 47: zlib detects a gzip or zlib header).
DECODERS_WBITS = {"gzip": 47, "deflate": 47, "x-gzip": 47}
UTF8_BOM = b"\xef\xbb\xbf"


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


def derived_event_id(topic: str, body: bytes, ts_ms: int | None) -> str:
    """The id of a message published without one, made from the message itself, so every instance (and a
    redelivery) gives it the same id: resume merges by it, and clients drop repeats by it."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(topic.encode())
    digest.update(b"\0%d\0" % (ts_ms if ts_ms is not None else -1))
    digest.update(body)
    return "m-" + digest.hexdigest()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def publish_time_ms(headers: Mapping[str, object] | None, timestamp_s: float | None) -> int | None:
    """The publisher's send time in ms: the `timestamp_in_ms` header if it holds a positive number, else the
    AMQP `timestamp` (whole seconds), else None."""
    value = (headers or {}).get(TIMESTAMP_MS_HEADER)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return int(timestamp_s * 1000) if timestamp_s is not None else None


def decode_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body as the publisher meant it: gzip and deflate are inflated, never past `max_bytes`."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    wbits = DECODERS_WBITS.get(encoding)
    if wbits is None:
        raise UnusableMessage(f"content_encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits)
    try:
        decoded = inflater.decompress(body, max_bytes + 1)
    except zlib.error as error:
        raise UnusableMessage(f"body is not valid {encoding}: {error}") from None
    if len(decoded) > max_bytes or inflater.unconsumed_tail:
        raise UnusableMessage(f"{encoding} body inflates to over the limit of {max_bytes} bytes")
    if not inflater.eof or inflater.unused_data:
        raise UnusableMessage(f"body is not valid {encoding}: truncated or followed by other data")
    return decoded


def event_from_message(
    topic: str,
    body: bytes,
    *,
    event_id: str | None,
    ts_ms: int | None,
    max_bytes: int,
    content_encoding: str | None = None,
) -> Event:
    """Check a broker message and turn it into an Event, or raise UnusableMessage saying why."""
    try:
        validate_topic(topic)
    except InvalidTopic as error:
        raise UnusableMessage(f"bad topic: {error}") from None
    if event_id is not None and not EVENT_ID_RE.fullmatch(event_id):
        raise UnusableMessage(f"message_id must be {EVENT_ID_RULE}")
    if len(body) > max_bytes:
        raise UnusableMessage(f"body is {len(body)} bytes, over the limit of {max_bytes}")
    body = decode_body(body, content_encoding, max_bytes)
    if body.startswith(UTF8_BOM):
        body = body[len(UTF8_BOM) :]
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise UnusableMessage(f"body is not JSON: {error}") from None
    return Event(
        topic=topic,
        id=event_id or derived_event_id(topic, body, ts_ms),
        data=body.strip(),
        ts_ms=ts_ms or now_ms(),
        stamped=ts_ms is not None,
    )
