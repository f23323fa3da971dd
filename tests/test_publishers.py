"""What publishers send, as RabbitMQ carries it: compressed bodies, millisecond timestamps, ids, odd JSON."""

from __future__ import annotations

import datetime
import gzip
import struct
import time
import zlib

import aio_pika
import httpx
import orjson
import pamqp.decode
import pytest

from notifier.broker.aiormq_internals import read_timestamps_as_seconds
from notifier.formats.events import (
    MAX_DATA_DEPTH,
    MAX_TS_MS,
    TIMESTAMP_MS_HEADER,
    UnusableMessage,
    event_from_message,
    publish_time_ms,
)
from tests.support import API_KEY, ConnectClient, Publisher, RunningServer

LIMIT = 4096


def event(body: bytes, *, encoding: str | None = None, event_id: str | None = "e-1") -> bytes:
    return event_from_message(
        "user.a", body, event_id=event_id, ts_ms=None, max_bytes=LIMIT, content_encoding=encoding
    ).data


@pytest.mark.unit
def test_gzip_and_deflate_bodies_are_inflated() -> None:
    data = orjson.dumps({"text": "hi" * 100})
    assert event(gzip.compress(data), encoding="gzip") == data
    assert event(zlib.compress(data), encoding="deflate") == data
    assert event(data, encoding="identity") == data


@pytest.mark.unit
def test_a_compressed_body_that_inflates_past_the_limit_is_refused_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")  # 50 MB of JSON in about 50 KB
    assert len(bomb) < 100_000
    started = time.monotonic()
    with pytest.raises(UnusableMessage, match=f"inflates to over the limit of {len(bomb)} bytes"):
        event_from_message("user.a", bomb, event_id=None, ts_ms=None, max_bytes=len(bomb), content_encoding="gzip")
    assert time.monotonic() - started < 1.0


@pytest.mark.unit
def test_bad_encodings_are_refused_with_their_reason() -> None:
    data = orjson.dumps([1, 2, 3])
    with pytest.raises(UnusableMessage, match="'br' is not supported"):
        event(data, encoding="br")
    with pytest.raises(UnusableMessage, match="not valid gzip"):
        event(data, encoding="gzip")
    with pytest.raises(UnusableMessage, match="truncated"):
        event(gzip.compress(data)[:-6], encoding="gzip")


@pytest.mark.unit
def test_a_utf8_bom_is_dropped_and_nesting_past_254_levels_is_refused_as_the_http_api_does() -> None:
    assert event(b'\xef\xbb\xbf{"a": 1}') == b'{"a": 1}'
    assert event(b"[" * MAX_DATA_DEPTH + b"]" * MAX_DATA_DEPTH) == b"[" * MAX_DATA_DEPTH + b"]" * MAX_DATA_DEPTH
    deep_object = b'{"a":' * MAX_DATA_DEPTH + b"1" + b"}" * MAX_DATA_DEPTH
    assert event(deep_object) == deep_object
    for depth in (MAX_DATA_DEPTH + 1, 1024):
        with pytest.raises(UnusableMessage, match=f"nested more than {MAX_DATA_DEPTH} levels deep"):
            event(b"[" * depth + b"]" * depth)
    with pytest.raises(UnusableMessage, match="body is not JSON"):
        event(b"[" * 1025 + b"]" * 1025)
    # Many brackets side by side are not deep.
    assert event(b"[" + b"[]," * 1000 + b"[]]")


@pytest.mark.unit
def test_content_encoding_is_exactly_gzip_deflate_or_identity() -> None:
    data = orjson.dumps({"text": "hi"})
    assert event(data, encoding=None) == data
    assert event(data, encoding="") == data
    assert event(data, encoding="identity") == data
    for other in ("GZIP", "x-gzip", "Gzip", " gzip", "Deflate", "IDENTITY", "x-deflate", "br"):
        body = gzip.compress(data) if "z" in other.lower() else data
        with pytest.raises(UnusableMessage, match=f"content_encoding {other!r} is not supported"):
            event(body, encoding=other)


@pytest.mark.unit
def test_message_id_follows_the_same_rule_as_the_http_api() -> None:
    assert event(b"1", event_id="order-1234:shipped@eu.1") == b"1"
    for bad in ("x" * 129, "has space", 'quote"', ""):
        with pytest.raises(UnusableMessage, match="message_id must be 1 to 128"):
            event(b"1", event_id=bad)


@pytest.mark.unit
def test_millisecond_header_wins_over_the_whole_second_timestamp() -> None:
    assert publish_time_ms({TIMESTAMP_MS_HEADER: 1_700_000_000_123}, 1_700_000_000.0) == 1_700_000_000_123
    assert publish_time_ms({TIMESTAMP_MS_HEADER: 0}, None) == 0
    assert publish_time_ms({TIMESTAMP_MS_HEADER: MAX_TS_MS}, None) == 2**53 - 1
    assert publish_time_ms({"other": 1}, 1_700_000_000.0) == 1_700_000_000_000
    assert publish_time_ms({}, None) is None


@pytest.mark.unit
@pytest.mark.parametrize(
    "value", ["123", b"1700000000123", "soon", 1.5, 1_700_000_000_123.0, True, -1, 2**53, 2**63 - 1, None, [1]]
)
def test_timestamp_in_ms_is_an_integer_from_0_to_2_to_the_53_minus_1(value: object) -> None:
    with pytest.raises(UnusableMessage, match=f"{TIMESTAMP_MS_HEADER} must be an integer from 0 to {2**53 - 1}"):
        publish_time_ms({TIMESTAMP_MS_HEADER: value}, 1_700_000_000.0)


@pytest.mark.unit
def test_the_amqp_timestamp_is_whole_seconds_up_to_the_end_of_year_9999() -> None:
    year_9999 = datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC).timestamp()
    assert publish_time_ms(None, year_9999) == 253_402_214_400_000
    assert publish_time_ms(None, 0.0) == 0
    for bad in (-1.0, 253_402_300_800.0, datetime.datetime.max.replace(tzinfo=datetime.UTC).timestamp()):
        with pytest.raises(UnusableMessage, match="timestamp must be whole seconds"):
            publish_time_ms(None, bad)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (1_700_000_000, datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)),
        (2**32, datetime.datetime(2106, 2, 7, 6, 28, 16, tzinfo=datetime.UTC)),  # pamqp took this as ms
        (253_402_214_400, datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)),
        (253_402_300_800, datetime.datetime.max.replace(tzinfo=datetime.UTC)),  # past year 9999: refused later
        (2**64 - 1, datetime.datetime.max.replace(tzinfo=datetime.UTC)),
    ],
)
def test_an_amqp_timestamp_is_decoded_as_whole_seconds(seconds: int, expected: datetime.datetime) -> None:
    read_timestamps_as_seconds()
    _, decoded = pamqp.decode.by_type(struct.pack(">Q", seconds), "timestamp")
    assert decoded == expected


@pytest.mark.rabbitmq
async def test_http_publish_carries_milliseconds_to_rabbitmq_and_to_the_client(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    alice = await connect(server, "alice")
    channel = await publisher.connection.channel()
    tap = await channel.declare_queue(exclusive=True, auto_delete=True)
    await tap.bind(exchange, routing_key="user.alice")
    before = time.time_ns() // 1_000_000
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        answer = await http.post(
            "/api/publish",
            json={"topic": "user.alice", "data": 1},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert answer.status_code == 202, answer.text
    after = time.time_ns() // 1_000_000
    message = await tap.get(timeout=5)
    sent_ms = message.headers[TIMESTAMP_MS_HEADER]
    assert isinstance(sent_ms, int) and before <= sent_ms <= after
    assert (await alice.expect_event("user.alice"))["ts"] == sent_ms


@pytest.mark.rabbitmq
async def test_gzip_event_is_delivered_and_a_gzip_bomb_is_dead_lettered_with_why(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    alice = await connect(server, "alice")
    bomb = gzip.compress(b"[" + b" " * (server.settings.max_event_bytes * 100) + b"]")
    for message_id, body in (("bomb", bomb), ("zipped", gzip.compress(orjson.dumps({"zipped": True})))):
        await publisher.exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                content_encoding="gzip",
                message_id=message_id,
                headers={TIMESTAMP_MS_HEADER: 1_700_000_000_123},
            ),
            routing_key="user.alice",
        )
    delivered = await alice.expect_event("user.alice")
    assert (delivered["id"], delivered["data"], delivered["ts"]) == ("zipped", {"zipped": True}, 1_700_000_000_123)
    channel = await publisher.connection.channel()
    dead_queue = await channel.declare_queue(f"{exchange}.dead", passive=True)
    dead = await dead_queue.get(timeout=5)
    assert dead.message_id == "bomb"
    assert "inflates to over the limit" in str(dead.headers["x-notifier-error"])
    await dead.ack()


@pytest.mark.rabbitmq
async def test_messages_outside_the_documented_contract_are_dead_lettered_with_why(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    """What RabbitMQ carries, field by field: undocumented encodings, timestamps that are not integers or past
    2^53 - 1, and bodies nested past the HTTP API's cap are refused; a timestamp of year 9999 is milliseconds."""
    alice = await connect(server, "alice")
    data = orjson.dumps({"ok": True})
    refused: dict[str, tuple[aio_pika.Message, str]] = {
        "upper-gzip": (aio_pika.Message(gzip.compress(data), content_encoding="GZIP"), "content_encoding 'GZIP'"),
        "x-gzip": (aio_pika.Message(gzip.compress(data), content_encoding="x-gzip"), "content_encoding 'x-gzip'"),
        "ms-string": (aio_pika.Message(data, headers={TIMESTAMP_MS_HEADER: "123"}), TIMESTAMP_MS_HEADER),
        "ms-float": (aio_pika.Message(data, headers={TIMESTAMP_MS_HEADER: 1.5}), TIMESTAMP_MS_HEADER),
        "ms-huge": (aio_pika.Message(data, headers={TIMESTAMP_MS_HEADER: 2**63 - 1}), TIMESTAMP_MS_HEADER),
        "deep": (aio_pika.Message(b"[" * 1024 + b"]" * 1024), f"nested more than {MAX_DATA_DEPTH} levels"),
    }
    for message_id, (message, _) in refused.items():
        message.message_id = message_id
        await publisher.exchange.publish(message, routing_key="user.alice")
    year_9999 = datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC)
    await publisher.exchange.publish(
        aio_pika.Message(data, message_id="far", timestamp=year_9999), routing_key="user.alice"
    )
    delivered = await alice.expect_event("user.alice")
    assert (delivered["id"], delivered["ts"]) == ("far", 253_402_214_400_000)
    channel = await publisher.connection.channel()
    dead_queue = await channel.declare_queue(f"{exchange}.dead", passive=True)
    reasons: dict[str, str] = {}
    for _ in refused:
        dead = await dead_queue.get(timeout=5)
        reasons[str(dead.message_id)] = str(dead.headers["x-notifier-error"])
        await dead.ack()
    for message_id, (_, reason) in refused.items():
        assert reason in reasons[message_id], (message_id, reasons[message_id])
