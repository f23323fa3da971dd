"""What publishers send, as RabbitMQ carries it: compressed bodies, millisecond timestamps, ids, odd JSON."""

from __future__ import annotations

import gzip
import time
import zlib

import aio_pika
import httpx
import orjson
import pytest

from notifier.formats.events import TIMESTAMP_MS_HEADER, UnusableMessage, event_from_message, publish_time_ms
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
def test_a_utf8_bom_is_dropped_and_nesting_past_1024_levels_is_refused() -> None:
    assert event(b'\xef\xbb\xbf{"a": 1}') == b'{"a": 1}'
    assert event(b"[" * 1024 + b"]" * 1024) == b"[" * 1024 + b"]" * 1024
    with pytest.raises(UnusableMessage, match="depth"):
        event(b"[" * 1025 + b"]" * 1025)


@pytest.mark.unit
def test_message_id_follows_the_same_rule_as_the_http_api() -> None:
    assert event(b"1", event_id="order-1234:shipped@eu.1") == b"1"
    for bad in ("x" * 129, "has space", 'quote"', ""):
        with pytest.raises(UnusableMessage, match="message_id must be 1 to 128"):
            event(b"1", event_id=bad)


@pytest.mark.unit
def test_millisecond_header_wins_over_the_whole_second_timestamp() -> None:
    assert publish_time_ms({TIMESTAMP_MS_HEADER: 1_700_000_000_123}, 1_700_000_000.0) == 1_700_000_000_123
    assert publish_time_ms({TIMESTAMP_MS_HEADER: b"1700000000123"}, None) == 1_700_000_000_123
    assert publish_time_ms({TIMESTAMP_MS_HEADER: "soon"}, 1_700_000_000.0) == 1_700_000_000_000
    assert publish_time_ms({}, None) is None


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
