"""Parsing client messages and encoding server messages."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.formats import messages
from notifier.formats.events import Event, UnusableMessage, event_from_message


def test_parse_each_frame_type() -> None:
    assert messages.parse_client_message('{"type":"subscribe","topic":"a","id":1}') == messages.Subscribe("a", 1)
    assert messages.parse_client_message('{"type":"unsubscribe","topic":"a"}') == messages.Unsubscribe("a", None)
    assert messages.parse_client_message('{"type":"ping","id":"p"}') == messages.Ping("p")
    assert messages.parse_client_message('{"type":"auth","token":"t"}') == messages.Auth("t")
    assert messages.parse_client_message('{"type":"refresh","token":"t","id":2}') == messages.Refresh("t", 2)


@pytest.mark.parametrize("request_id", [True, 1.5, [1], 2**60, "x" * 65])
def test_bad_ids_are_refused(request_id: object) -> None:
    with pytest.raises(messages.BadMessage) as bad:
        messages.parse_client_message(orjson.dumps({"type": "ping", "id": request_id}).decode())
    assert bad.value.code == "bad_request"


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_with_a_code(text: str) -> None:
    try:
        messages.parse_client_message(text)
    except messages.BadMessage as bad:
        assert bad.code in {"bad_request", "unknown_type"}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_event_frame_carries_data_unchanged(data: object) -> None:
    event = event_from_message("a.b", orjson.dumps(data), event_id="e", ts_ms=5, max_bytes=10_000)
    frame = orjson.loads(messages.event(event))
    assert frame == {"type": "event", "topic": "a.b", "id": "e", "ts": 5, "data": data}


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("a.b", b"{oops", "not JSON"),
        ("a.b", b"", "not JSON"),
        ("a.b", b"\xff\xfe", "not JSON"),
        ("a..b", b"1", "bad topic"),
        ("a.b", b"1" * 101, "over the limit"),
    ],
)
def test_unusable_messages_say_why(topic: str, body: bytes, reason: str) -> None:
    with pytest.raises(UnusableMessage) as unusable:
        event_from_message(topic, body, event_id=None, ts_ms=None, max_bytes=100)
    assert reason in str(unusable.value)


def test_missing_event_id_is_assigned() -> None:
    event = event_from_message("a", b"1", event_id=None, ts_ms=None, max_bytes=100)
    assert isinstance(event, Event)
    assert event.id.startswith("m-") and len(event.id) == 34  # made from the message (tests/test_event_ids.py)
    assert event.ts_ms > 0
