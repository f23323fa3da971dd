"""The hub's bookkeeping on the in-memory broker: bind on first subscriber, unbind on last, fan-out once."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from notifier.broker import BrokerUnavailable
from notifier.broker.memory import MemoryBroker
from notifier.connection.hub import Hub
from notifier.formats.wire import Frame


class Inbox:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def offer(self, frame: Frame) -> None:
        self.frames.append(frame)


@pytest.fixture
async def hub() -> Hub:
    broker = MemoryBroker(max_event_bytes=1000)
    hub = Hub(broker)
    await broker.connect(hub.deliver)
    return hub


async def test_first_subscriber_binds_last_unbinds(hub: Hub) -> None:
    broker = hub._broker
    assert isinstance(broker, MemoryBroker)
    a, b = Inbox(), Inbox()
    await hub.subscribe(a, "t")
    await hub.subscribe(b, "t")
    assert broker.bound_topics == {"t"}
    await hub.unsubscribe(a, "t")
    assert broker.bound_topics == {"t"}
    await hub.unsubscribe(b, "t")
    assert broker.bound_topics == frozenset()
    assert hub.bound_topics == frozenset()


async def test_event_is_encoded_once_and_shared(hub: Hub) -> None:
    inboxes = [Inbox() for _ in range(5)]
    for inbox in inboxes:
        await hub.subscribe(inbox, "t")
    await hub._broker.publish("t", b'{"x": 1}', "id-1")
    frames = [inbox.frames[0] for inbox in inboxes]
    assert all(frame is frames[0] for frame in frames)  # the very same object, not five encodings
    assert orjson.loads(frames[0].text)["data"] == {"x": 1}
    assert frames[0].wire == b"\x81" + bytes([len(frames[0].text)]) + frames[0].text.encode()


async def test_concurrent_subscribe_and_unsubscribe_leave_consistent_bindings(hub: Hub) -> None:
    broker = hub._broker
    assert isinstance(broker, MemoryBroker)
    inboxes = [Inbox() for _ in range(50)]
    await asyncio.gather(*(hub.subscribe(inbox, "t") for inbox in inboxes))
    await asyncio.gather(*(hub.unsubscribe(inbox, "t") for inbox in inboxes[:49]))
    assert broker.bound_topics == {"t"}
    await hub.unsubscribe(inboxes[49], "t")
    assert broker.bound_topics == frozenset()
    assert not hub._guards


async def test_failed_bind_leaves_nothing_behind() -> None:
    broker = MemoryBroker(max_event_bytes=1000)  # never connected: bind fails
    hub = Hub(broker)
    with pytest.raises(BrokerUnavailable):
        await hub.subscribe(Inbox(), "t")
    assert hub.subscriber_count("t") == 0
    assert hub.bound_topics == frozenset()
