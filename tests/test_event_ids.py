"""An event published without an id gets one made from the message itself: the same on every instance and on
every redelivery, different for a different message."""

from __future__ import annotations

from notifier.formats.events import event_from_message


def consumed(topic: str, body: bytes, ts_ms: int | None, event_id: str | None = None) -> str:
    return event_from_message(topic, body, event_id=event_id, ts_ms=ts_ms, max_bytes=1000).id


def test_the_same_message_gets_the_same_id_wherever_it_is_consumed() -> None:
    assert consumed("news", b'{"a":1}', 1_767_225_600_123) == consumed("news", b'{"a":1}', 1_767_225_600_123)


def test_a_different_topic_body_or_publish_time_gets_another_id() -> None:
    base = consumed("news", b'{"a":1}', 1000)
    assert len({base, consumed("sport", b'{"a":1}', 1000), consumed("news", b'{"a":2}', 1000)}) == 3
    assert consumed("news", b'{"a":1}', 1001) != base
    assert consumed("news", b'{"a":1}', None) != base


def test_a_publishers_id_is_kept() -> None:
    assert consumed("news", b"1", 1000, event_id="order-17") == "order-17"
