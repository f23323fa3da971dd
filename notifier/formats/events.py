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
# The largest publish time in ms an event may carry: JavaScript's largest exact integer (2^53 - 1).
MAX_TS_MS = 2**53 - 1
# The largest AMQP `timestamp` (whole seconds) taken: the last second of year 9999.
MAX_TIMESTAMP_S = 253_402_300_799
# Body encodings a publisher may name in `content_encoding`, exactly as written (wbits 47: zlib detects a gzip
# or zlib header). Nothing else is taken: no other spelling, no other case.
DECODERS_WBITS = {"gzip": 47, "deflate": 47}
IDENTITY_ENCODINGS = ("", "identity")
# The deepest JSON an event may carry, from RabbitMQ as from the HTTP API: the JSON encoder's recursion limit,
# so whatever reaches a client can be written out again by a JSON library with a recursion limit of its own.
MAX_DATA_DEPTH = 254
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
    """The publisher's send time in ms: the `timestamp_in_ms` header (an integer, 0 to 2^53 - 1), else the AMQP
    `timestamp` (whole seconds, 0 to the end of year 9999) times 1000, else None. A value outside its rule raises
    UnusableMessage saying why (the message is dead-lettered, as any that breaks the contract)."""
    if headers and TIMESTAMP_MS_HEADER in headers:
        value = headers[TIMESTAMP_MS_HEADER]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TS_MS:
            raise UnusableMessage(f"header {TIMESTAMP_MS_HEADER} must be an integer from 0 to {MAX_TS_MS}")
        return value
    if timestamp_s is None:
        return None
    if not 0 <= timestamp_s <= MAX_TIMESTAMP_S:
        raise UnusableMessage(f"timestamp must be whole seconds from 0 to {MAX_TIMESTAMP_S} (the end of year 9999)")
    return int(timestamp_s) * 1000


def decode_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body as the publisher meant it: gzip and deflate are inflated, never past `max_bytes`."""
    encoding = content_encoding or ""
    if encoding in IDENTITY_ENCODINGS:
        return body
    wbits = DECODERS_WBITS.get(encoding)
    if wbits is None:
        raise UnusableMessage(
            f"content_encoding {encoding[:40]!r} is not supported (exactly gzip, deflate or identity, or none)"
        )
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


def check_depth(value: object, body: bytes) -> None:
    """Refuse JSON nested more than MAX_DATA_DEPTH levels deep, as the HTTP API does. Only a body with that
    many brackets can be, so most bodies cost two byte counts."""
    if body.count(b"[") + body.count(b"{") <= MAX_DATA_DEPTH:
        return
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise UnusableMessage(f"body is nested more than {MAX_DATA_DEPTH} levels deep") from None


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
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise UnusableMessage(f"body is not JSON: {error}") from None
    check_depth(value, body)
    return Event(
        topic=topic,
        id=event_id or derived_event_id(topic, body, ts_ms),
        data=body.strip(),
        ts_ms=ts_ms if ts_ms is not None else now_ms(),
        stamped=ts_ms is not None,
    )
